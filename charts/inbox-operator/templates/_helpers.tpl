{{- define "inbox-operator.labels" -}}
app.kubernetes.io/name: inbox-operator
{{- end -}}
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
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
