{{/* Name of every object; `inbox-operator` unless fullnameOverride is set. */}}
{{- define "inbox-operator.fullname" -}}
{{- .Values.fullnameOverride | default "inbox-operator" | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels on every object, also the Deployment's selector. The same as deploy/ (no chart or
release labels), so `helm template` and `kubectl kustomize deploy/base` compare equal.
*/}}
{{- define "inbox-operator.labels" -}}
app.kubernetes.io/name: inbox-operator
{{- if ne (include "inbox-operator.fullname" .) "inbox-operator" }}
app.kubernetes.io/instance: {{ include "inbox-operator.fullname" . }}
{{- end }}
{{- end -}}

{{/* The controller's rules: the same in the ClusterRole and in each namespaced Role. */}}
{{- define "inbox-operator.rules" -}}
- apiGroups: ["agentsend.io"]
  resources: ["inboxes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["agentsend.io"]
  resources: ["inboxes/status"]
  verbs: ["patch"]
- apiGroups: ["agentsend.io"]
  resources: ["inboxes/finalizers"]
  verbs: ["update"]
- apiGroups: ["agentsend.io"]
  resources: ["accounts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["agentsend.io"]
  resources: ["accounts/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* ClusterAccounts (cluster-scoped). */}}
{{- define "inbox-operator.clusterAccountRules" -}}
- apiGroups: ["agentsend.io"]
  resources: ["clusteraccounts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["agentsend.io"]
  resources: ["clusteraccounts/status"]
  verbs: ["patch"]
{{- end -}}

{{/* Name of the metrics port: `https` with --metrics-secure (the default), else `http`. */}}
{{- define "inbox-operator.metricsPortName" -}}
{{- if .Values.metrics.secure }}https{{ else }}http{{ end -}}
{{- end -}}
