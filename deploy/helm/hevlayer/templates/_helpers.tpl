{{/* Object name prefix: the release name unless fullnameOverride. */}}
{{- define "hevlayer.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "hevlayer.baseLabels" -}}
app.kubernetes.io/part-of: hevlayer
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "hevlayer.labels" -}}
{{ include "hevlayer.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "hevlayer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hevlayer.fullname" .root }}-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "hevlayer.componentLabels" -}}
{{ include "hevlayer.baseLabels" .root }}
{{ include "hevlayer.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.gateway.image). */}}
{{- define "hevlayer.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* host:port of a component's gRPC Service: (dict "root" $ "component" "gateway" "port" 50051). */}}
{{- define "hevlayer.address" -}}
{{- printf "%s-%s.%s.svc.%s:%v" (include "hevlayer.fullname" .root) .component .root.Release.Namespace .root.Values.clusterDomain .port -}}
{{- end -}}

{{- define "hevlayer.gatewayAddress" -}}
{{- include "hevlayer.address" (dict "root" . "component" "gateway" "port" 50051) -}}
{{- end -}}

{{- define "hevlayer.gatewayHttpUrl" -}}
{{- printf "http://%s-gateway.%s.svc.%s:8080" (include "hevlayer.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Secret names. */}}
{{- define "hevlayer.tokensSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-tokens" (include "hevlayer.fullname" .)) -}}
{{- end -}}

{{- define "hevlayer.s3Secret" -}}
{{- .Values.s3.existingSecret | default (printf "%s-s3" (include "hevlayer.fullname" .)) -}}
{{- end -}}

{{- define "hevlayer.hasS3Credentials" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId -}}true{{- end -}}
{{- end -}}

{{- define "hevlayer.databaseSecret" -}}
{{- if eq .Values.postgresql.mode "external" -}}
{{- .Values.postgresql.external.existingSecret | default (printf "%s-database" (include "hevlayer.fullname" .)) -}}
{{- else -}}
{{- .Values.postgresql.embedded.existingSecret | default (printf "%s-database" (include "hevlayer.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{- define "hevlayer.sinkSecret" -}}
{{- printf "%s-sink" (include "hevlayer.fullname" .) -}}
{{- end -}}

{{- define "hevlayer.tlsSecret" -}}
{{- index .root.Values.tls.secrets .component | default (printf "%s-%s-tls" (include "hevlayer.fullname" .root) .component) -}}
{{- end -}}

{{/* The settings every hevlayer container shares (ConfigMap data). */}}
{{- define "hevlayer.commonConfig" -}}
HEVLAYER_LOG_LEVEL: {{ .Values.log.level | quote }}
HEVLAYER_LOG_FORMAT: {{ .Values.log.format | quote }}
HEVLAYER_TRACES_EXPORTER: {{ .Values.tracesExporter | quote }}
{{- end -}}

{{/* Client TLS variables of a component that calls another hevlayer service. */}}
{{- define "hevlayer.clientTlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: HEVLAYER_CLIENT_TLS_CA
  value: /etc/hevlayer/tls/ca.crt
{{- if .Values.tls.mutual }}
- name: HEVLAYER_CLIENT_TLS_CERT
  value: /etc/hevlayer/tls/tls.crt
- name: HEVLAYER_CLIENT_TLS_KEY
  value: /etc/hevlayer/tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* Server TLS variables of a component serving gRPC. */}}
{{- define "hevlayer.serverTlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: HEVLAYER_TLS_CERT
  value: /etc/hevlayer/tls/tls.crt
- name: HEVLAYER_TLS_KEY
  value: /etc/hevlayer/tls/tls.key
{{- end }}
{{- end -}}

{{/* An API token read from the tokens Secret as a file: (dict "root" $ "key" "admin.token"). */}}
{{- define "hevlayer.tokenEnv" -}}
{{- if .root.Values.auth.enabled }}
- name: HEVLAYER_TOKEN_FILE
  value: /etc/hevlayer/token/{{ .key }}
{{- end }}
{{- end -}}

{{/* Volumes and mounts for TLS material and a token: (dict "root" $ "component" "gateway" "token" "admin.token"). */}}
{{- define "hevlayer.secretVolumes" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "hevlayer.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- if and .root.Values.auth.enabled .token }}
- name: token
  secret:
    secretName: {{ include "hevlayer.tokensSecret" .root }}
    defaultMode: 0440
    items:
      - key: {{ .token }}
        path: {{ .token }}
{{- end }}
{{- end -}}

{{- define "hevlayer.secretMounts" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/hevlayer/tls
  readOnly: true
{{- end }}
{{- if and .root.Values.auth.enabled .token }}
- name: token
  mountPath: /etc/hevlayer/token
  readOnly: true
{{- end }}
{{- end -}}

{{/* Probes of a gRPC service: readiness on the gRPC health service (dependencies
included), liveness on the process answering /healthz. The kubelet's gRPC probe
speaks no TLS: with tls.enabled readiness uses /readyz, which reports the same
state as gRPC health. */}}
{{- define "hevlayer.probes" -}}
readinessProbe:
{{- if .root.Values.tls.enabled }}
  httpGet:
    path: /readyz
    port: http
{{- else }}
  grpc:
    port: {{ .grpcPort }}
{{- end }}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/* Scheduling fields of a component's pod: (the component's values). */}}
{{- define "hevlayer.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "hevlayer.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
