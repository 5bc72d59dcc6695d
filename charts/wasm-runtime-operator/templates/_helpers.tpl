{{/* Chart name, at most 63 characters. */}}
{{- define "wrt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the objects: the release name, suffixed with the chart name unless it
already contains it. */}}
{{- define "wrt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting the operator pods. */}}
{{- define "wrt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wrt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "wrt.labels" -}}
{{ include "wrt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: wasm-runtime-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wrt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wrt.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The installer namespace, checked against the release namespace: the two must differ,
or the operator's namespace would have to allow privileged pods. */}}
{{- define "wrt.installerNamespace" -}}
{{- $ns := .Values.installer.namespace.name -}}
{{- if eq $ns .Release.Namespace -}}
{{- fail (printf "installer.namespace.name (%s) must differ from the release namespace: the installer namespace is privileged, the operator's is meant to be restricted" $ns) -}}
{{- end -}}
{{- $ns -}}
{{- end -}}

{{- define "wrt.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- define "wrt.operatorImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "wrt.installerImage" -}}
{{- printf "%s:%s" .Values.installer.image.repository (default .Chart.AppVersion .Values.installer.image.tag) -}}
{{- end -}}
