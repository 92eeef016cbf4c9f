"""What every service shares: tensor codec, config, server bootstrap (health, reflection, metrics,
logging, request ids), the model repository reader and the error-to-status mapping."""
