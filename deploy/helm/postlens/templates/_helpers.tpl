{{/* Names and labels shared by every object of the chart. */}}

{{- define "postlens.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "postlens.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "root" $ "component" "worker"). */}}
{{- define "postlens.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "postlens.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-credentials" (include "postlens.fullname" .)) -}}
{{- end -}}

{{- define "postlens.modelClaim" -}}
{{- .Values.modelRepository.existingClaim | default (printf "%s-models" (include "postlens.fullname" .)) -}}
{{- end -}}

{{- define "postlens.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Workers never outnumber partitions: a worker without a partition only idles. */}}
{{- define "postlens.maxWorkers" -}}
{{- $max := .Values.autoscaling.maxReplicas | default .Values.kafka.partitions | int -}}
{{- if gt $max (int .Values.kafka.partitions) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): the extra workers would idle" $max (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- if lt $max (int .Values.autoscaling.minReplicas) -}}
{{- fail "autoscaling.maxReplicas is below autoscaling.minReplicas" -}}
{{- end -}}
{{- $max -}}
{{- end -}}

{{- define "postlens.kafkaUsesSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "postlens.kafkaUsesTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{- define "postlens.usesCustomCa" -}}
{{- if or .Values.kafka.customCa .Values.elasticsearch.customCa }}true{{ end -}}
{{- end -}}

{{/* Pod security shared by every PostLens container: the images run as unprivileged users. */}}
{{- define "postlens.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
Environment of the worker and retrain containers: the ConfigMap's settings plus the credentials, each read from the
Secret only when the Secret has it (optional), so an existing Secret needs only the keys it uses.
*/}}
{{- define "postlens.settingsEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "postlens.fullname" . }}-settings
env:
{{- range $key := list "POSTLENS_KAFKA_SASL_USERNAME" "POSTLENS_KAFKA_SASL_PASSWORD" "POSTLENS_ES_API_KEY" "POSTLENS_ES_USERNAME" "POSTLENS_ES_PASSWORD" }}
  - name: {{ $key }}
    valueFrom:
      secretKeyRef:
        name: {{ include "postlens.secretName" $ }}
        key: {{ $key }}
        optional: true
{{- end }}
{{- end -}}

{{- define "postlens.caVolumeMount" -}}
{{- if include "postlens.usesCustomCa" . }}
- name: ca-certs
  mountPath: /etc/postlens/ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "postlens.caVolume" -}}
{{- if include "postlens.usesCustomCa" . }}
- name: ca-certs
  secret:
    secretName: {{ include "postlens.secretName" . }}
    defaultMode: 0444
    items:
      {{- if .Values.kafka.customCa }}
      - {key: kafka-ca.crt, path: kafka-ca.crt}
      {{- end }}
      {{- if .Values.elasticsearch.customCa }}
      - {key: es-ca.crt, path: es-ca.crt}
      {{- end }}
{{- end }}
{{- end -}}

{{/* Pod security of every PostLens pod: one unprivileged uid/gid, the owner of everything written to the volumes. */}}
{{- define "postlens.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podUser.uid }}
runAsGroup: {{ .Values.podUser.gid }}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/*
A PodDisruptionBudget's limit for a component whose replica floor is `floor`: the only replica is never evicted
(a drain waits until it is scaled up), several go one at a time. Include with (dict "floor" N).
*/}}
{{- define "postlens.disruptionLimit" -}}
{{- if le (int .floor) 1 -}}
minAvailable: 1
{{- else -}}
maxUnavailable: 1
{{- end -}}
{{- end -}}

{{/* The port of a URL (scheme default when it names none). */}}
{{- define "postlens.urlPort" -}}
{{- $url := urlParse . -}}
{{- $hostPort := splitList ":" $url.host -}}
{{- if gt (len $hostPort) 1 }}{{ last $hostPort }}{{ else }}{{ ternary 443 80 (eq $url.scheme "https") }}{{ end -}}
{{- end -}}

{{- define "postlens.checkpointsClaim" -}}
{{- .Values.retrain.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "postlens.fullname" .)) -}}
{{- end -}}

{{/* Where the trainer image keeps checkpoints (POSTLENS_HOME/checkpoints, created by deploy/docker/trainer.Dockerfile). */}}
{{- define "postlens.checkpointsPath" -}}
/home/postlens/.cache/postlens/checkpoints
{{- end -}}
