{{/*
Shared names and labels. The RBAC template (templates/rbac.yaml) and every other template use
these; change them here only.
*/}}

{{/* The chart name, or .Values.nameOverride. */}}
{{- define "mlops-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: .Values.fullnameOverride, else "<release>-<chart>" (just "<release>"
when the release name already contains the chart name). Truncated to 63 characters (DNS label).
*/}}
{{- define "mlops-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "mlops-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods (never change them: Deployment selectors are immutable). */}}
{{- define "mlops-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels of every object the chart creates. */}}
{{- define "mlops-operator.labels" -}}
helm.sh/chart: {{ include "mlops-operator.chart" . }}
{{ include "mlops-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mlops-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as (created by the chart unless serviceAccount.create=false). */}}
{{- define "mlops-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlops-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when the operator watches the whole cluster (watch.namespaces empty), else "". */}}
{{- define "mlops-operator.clusterWide" -}}
{{- if not .Values.watch.namespaces }}true{{- end }}
{{- end }}

{{/* The namespaces the operator serves, as a JSON list (MLOPS_NAMESPACES); "[]" = cluster-wide. */}}
{{- define "mlops-operator.watchNamespacesJson" -}}
{{- .Values.watch.namespaces | default list | uniq | toJson }}
{{- end }}

{{/* The kopf peering object's name (MLOPS_PEERING_NAME). */}}
{{- define "mlops-operator.peeringName" -}}
{{- default (include "mlops-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The operator image reference: repository:tag (tag defaults to .Chart.AppVersion) or @digest. */}}
{{- define "mlops-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespace of the monitoring objects (ServiceMonitor, PrometheusRule, dashboard). */}}
{{- define "mlops-operator.monitoringNamespace" -}}
{{- default .Release.Namespace .Values.metrics.namespace }}
{{- end }}
