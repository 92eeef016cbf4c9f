"""Distillation for serving: a large teacher's target-domain scores train a small student.

| module        | job |
|---------------|-----|
| config.py     | the typed ``distill`` section (teacher reference, temperature, alpha) and the loader that
|               | fills the student's data/split sections from the teacher's own config |
| teacher.py    | any scoring model as a teacher: a training run (PyTorch) or a published repository
|               | version (ONNX Runtime), with its identity for the student's manifest |
| objective.py  | the loss: T^2 KL(softmax(teacher/T) || softmax(student/T)) mixed with the student's
|               | own multinomial loss |
| runner.py     | trains the student (selection on validation), scores both on test once, saves a run
|               | directory that ``xdrec export`` publishes like any other |
| command.py    | ``xdrec distill`` |
"""
