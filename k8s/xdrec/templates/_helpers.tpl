{{/*
Helpers shared by every template. Most take a dict {"root": $, "component": "encoder"}: the
three components render from the same templates so they cannot drift apart.
*/}}

{{/* The three components, in start-up order. */}}
{{- define "xdrec.components" -}}
encoder scorer ranker
{{- end -}}

{{- define "xdrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Resource name prefix: the release name (or fullnameOverride). Truncated to 50 characters so
"<prefix>-encoder" / "<prefix>-models" stay within the 63-character DNS label limit.
*/}}
{{- define "xdrec.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "xdrec.componentName" -}}
{{- printf "%s-%s" (include "xdrec.fullname" .root) .component -}}
{{- end -}}

{{- define "xdrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "xdrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xdrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "xdrec.labels" -}}
helm.sh/chart: {{ include "xdrec.chart" . }}
{{ include "xdrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xdrec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "xdrec.componentSelectorLabels" -}}
{{ include "xdrec.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "xdrec.componentLabels" -}}
{{ include "xdrec.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "xdrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-xdrec" (include "xdrec.fullname" .)) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* grpc.health.v1 service name of a component (docs/architecture.md, "Services"). */}}
{{- define "xdrec.healthService" -}}
{{- get (dict "encoder" "xdrec.encoder.v1.EncoderService" "scorer" "xdrec.scorer.v1.ScorerService" "ranker" "xdrec.ranker.v1.RankerService") . -}}
{{- end -}}

{{/* image reference of a component: component override > global, digest > tag > appVersion. */}}
{{- define "xdrec.image" -}}
{{- $root := .root -}}
{{- $c := index $root.Values .component -}}
{{- $repo := default $root.Values.image.repository $c.image.repository -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $c.image.tag -}}
{{- if and $root.Values.image.digest (not $c.image.repository) (not $c.image.tag) -}}
{{- printf "%s@%s" $repo $root.Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "xdrec.usesModelRepository" -}}
{{- if has . (list "encoder" "scorer") }}true{{ end -}}
{{- end -}}

{{- define "xdrec.modelRepoPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelRepository.mountPath) .Values.modelRepository.repositoryPath -}}
{{- end -}}

{{- define "xdrec.featuresPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelRepository.mountPath) .Values.modelRepository.featuresPath -}}
{{- end -}}

{{- define "xdrec.gpuEnabled" -}}
{{- if and (eq .root.Values.profile "gpu") (eq .component "scorer") }}true{{ end -}}
{{- end -}}

{{/*
The environment of a component as a YAML map: the CLI reads every flag `--foo-bar` from
XDREC_FOO_BAR (docs/architecture.md). Chart-managed flags first; `config` adds the rest (the
schema forbids it from overriding the chart-managed ones, which probes and Services depend on).
*/}}
{{- define "xdrec.env" -}}
{{- $root := .root -}}
{{- $c := index $root.Values .component -}}
{{- $env := dict "XDREC_PORT" (toString $c.port) -}}
{{- $_ := set $env "XDREC_HOST" "0.0.0.0" -}}
{{- $_ := set $env "XDREC_METRICS_PORT" (ternary (toString $root.Values.metrics.port) "0" $root.Values.metrics.enabled) -}}
{{- $tls := $root.Values.tls -}}
{{- if $tls.enabled -}}
{{- $dir := trimSuffix "/" $tls.mountPath -}}
{{- $_ := set $env "XDREC_TLS_CERT" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $env "XDREC_TLS_KEY" (printf "%s/tls.key" $dir) -}}
{{- $_ := set $env "XDREC_HEALTH_PORT" (toString $tls.healthPort) -}}
{{- $_ := set $env "XDREC_TLS_CA" (printf "%s/ca.crt" $dir) -}}
{{- if eq .component "ranker" -}}
{{- $_ := set $env "XDREC_DOWNSTREAM_TLS_CA" (printf "%s/ca.crt" $dir) -}}
{{- if include "xdrec.rankerMtlsPort" $root -}}
{{- $_ := set $env "XDREC_MTLS_PORT" (include "xdrec.rankerMtlsPort" $root) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $env "XDREC_TLS_CLIENT_AUTH" "true" -}}
{{- $_ := set $env "XDREC_TLS_ALLOWED_CLIENTS" (include "xdrec.componentName" (dict "root" $root "component" "ranker")) -}}
{{- end -}}
{{- end -}}
{{- if include "xdrec.authEnabled" . -}}
{{- $_ := set $env "XDREC_AUTH_TOKEN_FILE" (printf "%s/%s" (trimSuffix "/" $root.Values.auth.mountPath) $root.Values.auth.secretKey) -}}
{{- end -}}
{{- if eq .component "encoder" -}}
{{- $_ := set $env "XDREC_MODEL_REPO" (include "xdrec.modelRepoPath" $root) -}}
{{- $_ := set $env "XDREC_MODEL" $root.Values.modelRepository.modelName -}}
{{- $_ := set $env "XDREC_FEATURES" (include "xdrec.featuresPath" $root) -}}
{{- $fs := $root.Values.featureStore -}}
{{- $_ := set $env "XDREC_FEATURE_STORE" $fs.backend -}}
{{- if eq $fs.backend "redis" -}}
{{- $_ := set $env "XDREC_REDIS_URL" (include "xdrec.redisUrl" $root) -}}
{{- $_ := set $env "XDREC_REDIS_PREFIX" $fs.redis.prefix -}}
{{- $_ := set $env "XDREC_REDIS_TIMEOUT_S" (toString $fs.redis.timeoutSeconds) -}}
{{- $_ := set $env "XDREC_REDIS_WRITE_TIMEOUT_S" (toString $fs.redis.writeTimeoutSeconds) -}}
{{- end -}}
{{- else if eq .component "scorer" -}}
{{- $_ := set $env "XDREC_MODEL_REPO" (include "xdrec.modelRepoPath" $root) -}}
{{- $_ := set $env "XDREC_PROVIDERS" (ternary $c.gpu.providers $c.providers (eq $root.Values.profile "gpu")) -}}
{{- $mc := $c.modelControl -}}
{{- $_ := set $env "XDREC_MODEL_CONTROL" $mc.mode -}}
{{- if eq $mc.mode "explicit" -}}
{{- if not $mc.adminIdentities -}}
{{- fail "scorer.modelControl.mode explicit needs scorer.modelControl.adminIdentities (admin client certificate names)" -}}
{{- end -}}
{{- if not $tls.enabled -}}
{{- fail "scorer.modelControl.adminIdentities need tls.enabled (admins prove who they are with a client certificate)" -}}
{{- end -}}
{{- $_ := set $env "XDREC_ADMIN_IDENTITIES" (join "," $mc.adminIdentities) -}}
{{- end -}}
{{- else if eq .component "ranker" -}}
{{- $_ := set $env "XDREC_ENCODER" (printf "%s:%d" (include "xdrec.componentName" (dict "root" $root "component" "encoder")) (int $root.Values.encoder.port)) -}}
{{- $_ := set $env "XDREC_SCORER" (printf "%s:%d" (include "xdrec.componentName" (dict "root" $root "component" "scorer")) (int $root.Values.scorer.port)) -}}
{{- $_ := set $env "XDREC_QUEUE_BUDGET_MS" (toString $c.queueBudgetMs) -}}
{{- $_ := set $env "XDREC_LATENCY_TARGET_MS" (toString $c.latencyTargetMs) -}}
{{- $_ := set $env "XDREC_MIN_IN_FLIGHT" (toString $c.minInFlight) -}}
{{- end -}}
{{- $_ := set $env "XDREC_MAX_IN_FLIGHT" (toString $c.maxInFlight) -}}
{{- range $flag, $value := $c.config -}}
{{- $_ := set $env (printf "XDREC_%s" ($flag | upper | replace "-" "_")) (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* One probe: native gRPC on the component's port and health service name. */}}
{{- define "xdrec.probe" -}}
{{- $root := .root -}}
{{- $c := index $root.Values .component -}}
{{- $settings := mustMergeOverwrite (deepCopy (index $root.Values.probes .kind)) (deepCopy (default dict (index $c.probes .kind))) -}}
grpc:
  port: {{ include "xdrec.probePort" . }}
  service: {{ include "xdrec.healthService" .component }}
{{ toYaml $settings }}
{{- end -}}

{{/* Soft spread over nodes unless the component sets its own constraints. */}}
{{- define "xdrec.topologySpread" -}}
{{- $root := .root -}}
{{- $c := index $root.Values .component -}}
{{- if $c.topologySpreadConstraints -}}
{{ toYaml $c.topologySpreadConstraints }}
{{- else if $root.Values.spreadAcrossNodes -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "xdrec.componentSelectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{- define "xdrec.modelVolumeName" -}}model-repository{{- end -}}

{{- define "xdrec.pvcName" -}}
{{- if .Values.modelRepository.pvc.existingClaim -}}
{{- .Values.modelRepository.pvc.existingClaim -}}
{{- else -}}
{{- printf "%s-models" (include "xdrec.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The port the kubelet probes: the gRPC port, or with TLS on the plaintext health-only port
(kubelet gRPC probes cannot do TLS).
*/}}
{{- define "xdrec.probePort" -}}
{{- if .root.Values.tls.enabled -}}
{{- .root.Values.tls.healthPort -}}
{{- else -}}
{{- (index .root.Values .component).port -}}
{{- end -}}
{{- end -}}

{{/* Secret (kubernetes.io/tls: tls.crt, tls.key, ca.crt) holding a component's certificate. */}}
{{- define "xdrec.tlsSecretName" -}}
{{- $name := "" -}}
{{- if eq .root.Values.tls.source "existingSecrets" -}}
{{- $name = index .root.Values.tls.existingSecrets .component -}}
{{- end -}}
{{- default (printf "%s-tls" (include "xdrec.componentName" .)) $name -}}
{{- end -}}

{{/* Whether a component checks bearer tokens: the ranker, when auth is on. */}}
{{- define "xdrec.authEnabled" -}}
{{- if and (eq .component "ranker") .root.Values.auth.enabled }}true{{ end -}}
{{- end -}}

{{- define "xdrec.tokenSecretName" -}}
{{- default (printf "%s-ranker-tokens" (include "xdrec.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The ranker's mutual-TLS port, empty when TLS or the port is off. */}}
{{- define "xdrec.rankerMtlsPort" -}}
{{- if and .Values.tls.enabled (gt (int .Values.tls.rankerMtlsPort) 0) -}}
{{- .Values.tls.rankerMtlsPort -}}
{{- end -}}
{{- end -}}

{{/* The Redis the encoder dials: the in-chart one when enabled, else featureStore.redis.url. */}}
{{- define "xdrec.redisUrl" -}}
{{- $redis := .Values.featureStore.redis -}}
{{- if $redis.internal.enabled -}}
{{- printf "redis://%s:6379/0" (include "xdrec.componentName" (dict "root" . "component" "redis")) -}}
{{- else -}}
{{- required "featureStore.redis.url is required when featureStore.backend is redis and featureStore.redis.internal.enabled is false" $redis.url -}}
{{- end -}}
{{- end -}}
