{{/* The chart name, overridable. */}}
{{- define "purser.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: "purser" for a release named purser (so that names match
envoy/kubernetes/), <release>-purser otherwise.
*/}}
{{- define "purser.fullname" -}}
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

{{- define "purser.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "purser.labels" -}}
helm.sh/chart: {{ include "purser.chart" . }}
app.kubernetes.io/name: {{ include "purser.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: purser
{{- end }}

{{/* The serving pods: Deployment selector, Services, PDB, NetworkPolicy, Istio policies. */}}
{{- define "purser.serverSelectorLabels" -}}
app.kubernetes.io/name: {{ include "purser.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "purser.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "purser.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: repository@digest, else repository:tag (tag defaults to the appVersion). */}}
{{- define "purser.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The gRPC Service's in-cluster name, for Envoy, Istio and Envoy Gateway. */}}
{{- define "purser.grpcHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "purser.fullname" .) .Release.Namespace }}
{{- end }}

{{/* DATABASE_URL and the libpq TLS variables pgx reads, shared by serve and migrate. */}}
{{- define "purser.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom: { secretKeyRef: { name: {{ required "database.secretName: the Secret holding the database URL" .Values.database.secretName }}, key: {{ .Values.database.secretKey }} } }
{{- with .Values.database.tls }}
{{- if .sslmode }}
- name: PGSSLMODE
  value: {{ .sslmode | quote }}
{{- end }}
{{- if .caSecretName }}
- name: PGSSLROOTCERT
  value: /etc/purser/db-ca/{{ .caSecretKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "purser.databaseCAVolume" -}}
{{- with .Values.database.tls }}
{{- if .caSecretName }}
- name: db-ca
  secret:
    secretName: {{ .caSecretName }}
    items: [{ key: {{ .caSecretKey }}, path: {{ .caSecretKey }} }]
{{- end }}
{{- end }}
{{- end }}

{{- define "purser.databaseCAMount" -}}
{{- if .Values.database.tls.caSecretName }}
- { name: db-ca, mountPath: /etc/purser/db-ca, readOnly: true }
{{- end }}
{{- end }}
