{{/* Labels every object carries. No Helm bookkeeping labels: the default
render must equal manifests/weir.yaml. */}}
{{- define "weir.labels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/part-of: weir
{{- end -}}

{{- define "weir.agentLabels" -}}
{{ include "weir.labels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The admin address split into host and port, for the probes. */}}
{{- define "weir.adminHost" -}}
{{ regexReplaceAll ":[0-9]+$" .Values.agent.admin "" | trimPrefix "[" | trimSuffix "]" }}
{{- end -}}
{{- define "weir.adminPort" -}}
{{ regexFind "[0-9]+$" .Values.agent.admin }}
{{- end -}}
{{- define "weir.standbyAdminHost" -}}
{{ regexReplaceAll ":[0-9]+$" .Values.agent.standby.admin "" | trimPrefix "[" | trimSuffix "]" }}
{{- end -}}
{{- define "weir.standbyAdminPort" -}}
{{ regexFind "[0-9]+$" .Values.agent.standby.admin }}
{{- end -}}

{{/* weir-cni install flags, the same for the init and the watch container. */}}
{{- define "weir.installArgs" -}}
- --cni-conf-dir=/host/etc/cni/net.d
- --cni-bin-dir=/host/opt/cni/bin
- --agent-socket={{ .Values.agent.socket }}
- --mode={{ .Values.capture.mode }}
- --log-file={{ .Values.cni.logFile }}
{{- with .Values.cni.primary }}
- --primary={{ . }}
{{- end }}
{{- end -}}

{{- define "weir.installSecurityContext" -}}
runAsUser: 0
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  add: ["CHOWN", "DAC_OVERRIDE"]
{{- end -}}

{{- define "weir.installMounts" -}}
- name: cni-conf
  mountPath: /host/etc/cni/net.d
- name: cni-bin
  mountPath: /host/opt/cni/bin
{{- end -}}
