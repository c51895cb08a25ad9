{{/*
Names. Kubernetes names are DNS labels: 63 characters at most, and the
component suffixes below need room, hence the truncation to 50.
*/}}
{{- define "tether.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "tether.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tether.controlplane.fullname" -}}
{{- printf "%s-controlplane" (include "tether.fullname" .) }}
{{- end }}

{{- define "tether.agent.fullname" -}}
{{- printf "%s-agent" (include "tether.fullname" .) }}
{{- end }}

{{- define "tether.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; selector labels must never change after install. */}}
{{- define "tether.labels" -}}
helm.sh/chart: {{ include "tether.chart" . }}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tether
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tether.controlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controlplane
{{- end }}

{{- define "tether.controlplane.labels" -}}
{{ include "tether.labels" . }}
app.kubernetes.io/component: controlplane
{{- end }}

{{- define "tether.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "tether.agent.labels" -}}
{{ include "tether.labels" . }}
app.kubernetes.io/component: agent
tether.dev/pool: {{ .Values.agent.pool | quote }}
{{- end }}

{{- define "tether.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tether.controlplane.serviceAccountName" -}}
{{- if .Values.controlplane.serviceAccount.create }}
{{- default (include "tether.controlplane.fullname" .) .Values.controlplane.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controlplane.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tether.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "tether.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service's in-cluster DNS name, which agents in the cluster dial. */}}
{{- define "tether.controlplane.host" -}}
{{- printf "%s.%s.svc" (include "tether.controlplane.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "tether.controlplane.publicEndpoint" -}}
{{- default (printf "https://%s:%d" (include "tether.controlplane.host" .) (int .Values.controlplane.service.port)) .Values.controlplane.publicEndpoint }}
{{- end }}

{{/*
Names in the server certificate: the Service in every form a pod may dial,
localhost and 127.0.0.1 for `kubectl exec ... tetherctl` and port-forward,
then the operator's own names. Returned as a YAML list.
*/}}
{{- define "tether.controlplane.tlsNames" -}}
{{- $svc := include "tether.controlplane.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) "localhost" "127.0.0.1" }}
{{- toYaml (concat $names .Values.controlplane.tls.extraNames | uniq) }}
{{- end }}

{{- define "tether.controlplane.adminSecretName" -}}
{{- default (printf "%s-admin-key" (include "tether.controlplane.fullname" .)) .Values.controlplane.bootstrapApiKey.existingSecret }}
{{- end }}

{{- define "tether.controlplane.storeSecretName" -}}
{{- default (printf "%s-store" (include "tether.controlplane.fullname" .)) .Values.controlplane.store.postgres.existingSecret }}
{{- end }}

{{- define "tether.controlplane.caSecretName" -}}
{{- if eq .Values.controlplane.tls.mode "certManager" }}
{{- printf "%s-ca" (include "tether.controlplane.fullname" .) }}
{{- else }}
{{- .Values.controlplane.tls.existingSecret }}
{{- end }}
{{- end }}

{{/*
Where the agent container mounts its named credentials: one read-only file
per credential, named after it.
*/}}
{{- define "tether.agent.credentialsDir" -}}/etc/tether/credentials{{- end }}

{{/* Paths inside the control plane container. */}}
{{- define "tether.controlplane.dataDir" -}}/var/lib/tether/data{{- end }}
{{- define "tether.controlplane.adminKeyFile" -}}/etc/tether/bootstrap/api-key{{- end }}

{{/*
The restricted Pod Security Standard: non-root, no privilege escalation,
no capabilities, RuntimeDefault seccomp, read-only root. 65532 is the
distroless "nonroot" user the image runs as.
*/}}
{{- define "tether.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tether.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Checks across values. values.schema.json refuses the same values first,
naming the field; these messages also say why and how to fix it, and they
are what `--skip-schema-validation` and schema-blind tools get.
validate.yaml runs them on every render.
*/}}
{{- define "tether.validate" -}}
{{- $cp := .Values.controlplane }}
{{- if and $cp.enabled (gt (int $cp.replicas) 1) (not $cp.store.postgres.enabled) }}
{{- fail (printf "controlplane.replicas is %d, but the embedded SQLite store serves one replica only: set controlplane.replicas=1, or controlplane.store.postgres.enabled=true" (int $cp.replicas)) }}
{{- end }}
{{- if and $cp.enabled $cp.store.postgres.enabled (eq $cp.tls.mode "generated") }}
{{- fail "controlplane.store.postgres.enabled needs a CA that every replica shares, but controlplane.tls.mode=generated keeps it in one replica's data directory: set controlplane.tls.mode to certManager or existingSecret" }}
{{- end }}
{{- if and $cp.enabled $cp.store.postgres.enabled (not $cp.store.postgres.url) (not $cp.store.postgres.existingSecret) }}
{{- fail "controlplane.store.postgres.enabled needs controlplane.store.postgres.existingSecret (a Secret with the postgres:// URL) or controlplane.store.postgres.url" }}
{{- end }}
{{- if and $cp.enabled (eq $cp.tls.mode "generated") (not $cp.persistence.enabled) }}
{{- fail "controlplane.tls.mode=generated keeps the CA in the data directory, which needs controlplane.persistence.enabled=true: without it every restart makes a new CA and every agent must enroll again" }}
{{- end }}
{{- if and $cp.enabled (eq $cp.tls.mode "certManager") (not $cp.tls.certManager.issuerRef.name) }}
{{- fail "controlplane.tls.mode=certManager needs controlplane.tls.certManager.issuerRef.name (an Issuer or ClusterIssuer you created)" }}
{{- end }}
{{- if and $cp.enabled (eq $cp.tls.mode "existingSecret") (not $cp.tls.existingSecret) }}
{{- fail "controlplane.tls.mode=existingSecret needs controlplane.tls.existingSecret (a kubernetes.io/tls Secret with the CA)" }}
{{- end }}
{{- if and $cp.enabled $cp.socks.enabled }}
{{- $socksPort := int $cp.socks.port }}
{{- if has $socksPort (list 8080 8443) }}
{{- fail (printf "controlplane.socks.port %d is taken by the control plane itself (8443 gRPC, 8080 ops): pick another port for the SOCKS5 front, e.g. 1080" $socksPort) }}
{{- end }}
{{- range $cp.gateways }}
{{- if eq (int .port) $socksPort }}
{{- fail (printf "controlplane.socks.port %d is also the port of gateway %q in controlplane.gateways: the SOCKS5 front and a gateway cannot listen on the same port" $socksPort (toString .name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $a := .Values.agent }}
{{- if $a.enabled }}
{{- if not $a.pool }}
{{- fail "agent.enabled needs agent.pool: the pool of the join token (tetherctl tokens create --pool <pool>)" }}
{{- end }}
{{- if not $a.joinToken.existingSecret }}
{{- fail "agent.enabled needs agent.joinToken.existingSecret: a Secret holding the join token (see NOTES.txt of the control plane release or docs/install-kubernetes.md)" }}
{{- end }}
{{- if and (not $a.endpoint) (not $cp.enabled) }}
{{- fail "agent.endpoint is required when controlplane.enabled=false: the control plane's https://host:port" }}
{{- end }}
{{- $types := dict }}
{{- range $i, $h := $a.jobs.handlers }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" (toString $h.type)) }}
{{- fail (printf "agent.jobs.handlers[%d].type %q is not a valid job type: use 1-64 letters, digits, '.', '-' or '_'" $i (toString $h.type)) }}
{{- end }}
{{- if has $h.type (list "echo" "probe") }}
{{- fail (printf "agent.jobs.handlers[%d].type %q is a built-in job type of the agent: name the handler otherwise" $i $h.type) }}
{{- end }}
{{- if hasKey $types $h.type }}
{{- fail (printf "agent.jobs.handlers lists the type %q twice: one handler per job type" $h.type) }}
{{- end }}
{{- $_ := set $types $h.type true }}
{{- if not (hasPrefix "/" (toString $h.path)) }}
{{- fail (printf "agent.jobs.handlers[%d].path %q is not an absolute path: give the program's path inside the image or a volume of agent.extraVolumes, e.g. /opt/handlers/%s" $i (toString $h.path) (toString $h.type)) }}
{{- end }}
{{- end }}
{{- $names := dict }}
{{- range $i, $c := $a.credentials }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" (toString $c.name)) }}
{{- fail (printf "agent.credentials[%d].name %q is not a valid credential name: use 1-64 letters, digits, '.', '-' or '_'" $i (toString $c.name)) }}
{{- end }}
{{- if or (eq $c.name ".") (hasPrefix ".." $c.name) }}
{{- fail (printf "agent.credentials[%d].name %q cannot be a file name in the credentials volume: it must not be '.' or start with '..'" $i $c.name) }}
{{- end }}
{{- if hasKey $names $c.name }}
{{- fail (printf "agent.credentials lists the name %q twice: each credential needs its own name" $c.name) }}
{{- end }}
{{- $_ := set $names $c.name true }}
{{- if or (not $c.existingSecret) (not $c.key) }}
{{- fail (printf "agent.credentials[%d] (%s) needs existingSecret and key: the Secret and the key in it that hold the value" $i (toString $c.name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
