{{/*
Names, labels and the values every component shares. A component's resources are named
"<fullname>-<component>"; its pods carry "app.kubernetes.io/component: <component>", which is
also what its selectors, PodDisruptionBudget and NetworkPolicy match.
*/}}

{{- define "eventproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "eventproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (list $ "etcd"). */}}
{{- define "eventproxy.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "eventproxy.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's resources: (list $ "etcd"). */}}
{{- define "eventproxy.labels" -}}
{{- $root := index . 0 -}}
{{ include "eventproxy.selectorLabels" . }}
app.kubernetes.io/part-of: eventproxy
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels that z2jh's own NetworkPolicies look for: the proxy pods forward to the hub
(hub.jupyter.org/network-access-hub) and to singleuser servers
(hub.jupyter.org/network-access-singleuser).
*/}}
{{- define "eventproxy.z2jhAccessLabels" -}}
hub.jupyter.org/network-access-hub: "true"
hub.jupyter.org/network-access-singleuser: "true"
{{- end -}}

{{- define "eventproxy.etcd.scheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* "m-0.svc:2379,m-1.svc:2379,m-2.svc:2379": every member's client address. */}}
{{- define "eventproxy.etcd.hosts" -}}
{{- $fullname := include "eventproxy.fullname" . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $hosts = append $hosts (printf "%s-etcd-%d.%s-etcd:2379" $fullname $i $fullname) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* The route log URL (EventProxy.log_url, --log-url). */}}
{{- define "eventproxy.logUrl" -}}
{{- printf "%s://%s/%s" (ternary "etcds" "etcd" .Values.etcd.tls.enabled) (include "eventproxy.etcd.hosts" .) .Values.logPrefix -}}
{{- end -}}

{{/* The same etcd as the projector's --traefik-etcd URL (the traefik keys live beside the log). */}}
{{- define "eventproxy.traefikEtcdUrl" -}}
{{- printf "%s://%s" (ternary "etcds" "etcd" .Values.etcd.tls.enabled) (include "eventproxy.etcd.hosts" .) -}}
{{- end -}}

{{- define "eventproxy.etcd.authSecret" -}}
{{- .Values.etcd.auth.existingSecret | default (printf "%s-etcd-auth" (include "eventproxy.fullname" .)) -}}
{{- end -}}

{{- define "eventproxy.traefik.apiSecret" -}}
{{- .Values.traefik.api.existingSecret | default (printf "%s-traefik-api" (include "eventproxy.fullname" .)) -}}
{{- end -}}

{{/* The Secret (kubernetes.io/tls) with traefik's default TLS certificate. */}}
{{- define "eventproxy.traefik.defaultCertSecret" -}}
{{- .Values.traefik.defaultCertificate.existingSecret | default (printf "%s-traefik-default-cert" (include "eventproxy.fullname" .)) -}}
{{- end -}}

{{/* A password kept across upgrades: the Secret's current value, else a new random one.
     (list $ secretName key) */}}
{{- define "eventproxy.keptPassword" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $existing (hasKey $existing.data (index . 2)) -}}
{{- index $existing.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* Pod anti-affinity over nodes: (list $ "traefik" "soft"|"hard"). */}}
{{- define "eventproxy.antiAffinity" -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "eventproxy.selectorLabels" (list (index . 0) (index . 1)) | fromYaml)) -}}
podAntiAffinity:
{{- if eq (index . 2) "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list $term) | nindent 4 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list (dict "weight" 100 "podAffinityTerm" $term)) | nindent 4 }}
{{- end }}
{{- end -}}

{{/* Pods run as an unprivileged user, with a RuntimeDefault seccomp profile. */}}
{{- define "eventproxy.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "eventproxy.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The image reference of {repository, tag}. */}}
{{- define "eventproxy.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/*
etcd client settings for an eventproxy CLI container (nodes, projector): flags, and the
volumes/mounts they name. (list $ "eventproxy"|"reader")
*/}}
{{- define "eventproxy.etcdClientArgs" -}}
{{- $root := index . 0 }}
- --etcd-username={{ index . 1 }}
- --etcd-password-file=/etc/eventproxy/etcd-auth/{{ index . 1 }}-password
{{- if $root.Values.etcd.tls.enabled }}
- --etcd-ca-file=/etc/eventproxy/etcd-tls/ca.crt
- --etcd-cert-file=/etc/eventproxy/etcd-tls/tls.crt
- --etcd-key-file=/etc/eventproxy/etcd-tls/tls.key
{{- end }}
{{- end -}}

{{- define "eventproxy.etcdClientMounts" -}}
- name: etcd-auth
  mountPath: /etc/eventproxy/etcd-auth
  readOnly: true
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/eventproxy/etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "eventproxy.etcdClientVolumes" -}}
- name: etcd-auth
  secret:
    secretName: {{ include "eventproxy.etcd.authSecret" . }}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.clientSecret }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy "from" peers for the z2jh hub pod (in hub.namespace when set). */}}
{{- define "eventproxy.hubPeer" -}}
- podSelector:
    matchLabels:
      {{- toYaml .Values.hub.podLabels | nindent 6 }}
  {{- with .Values.hub.namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  {{- end }}
{{- end -}}

{{- define "eventproxy.singleuserPeer" -}}
- podSelector:
    matchLabels:
      {{- toYaml .Values.hub.singleuserPodLabels | nindent 6 }}
  {{- with .Values.hub.namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  {{- end }}
{{- end -}}

{{/* Refuse combinations the schema cannot express, naming the values to change. */}}
{{- define "eventproxy.validate" -}}
{{- if and (not .Values.traefik.enabled) (not .Values.dataplane.enabled) -}}
{{- fail "values: enable traefik.enabled or dataplane.enabled (or both): without either nothing serves user traffic" -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (or (not .Values.etcd.tls.serverSecret) (not .Values.etcd.tls.clientSecret)) -}}
{{- fail "values: etcd.tls.enabled needs etcd.tls.serverSecret and etcd.tls.clientSecret (Secrets with ca.crt, tls.crt, tls.key)" -}}
{{- end -}}
{{- if and .Values.projector.enabled (not .Values.traefik.enabled) -}}
{{- fail "values: projector.enabled writes traefik's keys; it needs traefik.enabled" -}}
{{- end -}}
{{- if gt (int .Values.etcd.pdb.minAvailable) (int .Values.etcd.replicas) -}}
{{- fail (printf "values: etcd.pdb.minAvailable (%d) is more than etcd.replicas (%d): no member could ever be drained" (int .Values.etcd.pdb.minAvailable) (int .Values.etcd.replicas)) -}}
{{- end -}}
{{- end -}}
