{{/*
Name of every object: fullnameOverride, else the release name when it already
says "nestdock", else "<release>-nestdock".
*/}}
{{- define "nestdock.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Labels of every object. The Helm ones only when Helm manages the objects
(helmManaged); the kustomize manifests carry the two kustomize adds.
*/}}
{{- define "nestdock.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/part-of: nestdock
{{- if .Values.helmManaged }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
{{- end -}}

{{/*
Selector of the webhook pods. Fixed (no release label): a Deployment's selector
cannot change, and nestdock is one per cluster, so the kustomize install and
the chart select the same pods.
*/}}
{{- define "nestdock.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "nestdock.tlsSecretName" -}}
{{- .Values.certificates.secretName | default (printf "%s-tls" (include "nestdock.fullname" .)) -}}
{{- end -}}

{{- define "nestdock.registryCacheName" -}}
{{- printf "%s-registry-cache" (include "nestdock.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The registry cache's URL as dind daemons reach it. */}}
{{- define "nestdock.registryCacheURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "nestdock.registryCacheName" .) .Release.Namespace (int .Values.registryCache.port) -}}
{{- end -}}

{{/*
nestdock's config file: .Values.config, plus the registry cache as a dind
mirror and dood pointed at the node daemon when those are enabled.
*/}}
{{- define "nestdock.configFile" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.registryCache.enabled -}}
{{- $dind := $config.dind | default dict -}}
{{- $mirrors := $dind.registryMirrors | default list -}}
{{- $url := include "nestdock.registryCacheURL" . -}}
{{- if not (has $url $mirrors) -}}
{{- $_ := set $dind "registryMirrors" (prepend $mirrors $url) -}}
{{- end -}}
{{- $_ := set $config "dind" $dind -}}
{{- end -}}
{{- if and .Values.nodeDocker.enabled .Values.nodeDocker.configureDood -}}
{{- $dood := $config.dood | default dict -}}
{{- $_ := set $dood "hostSocket" (printf "%s/docker.sock" .Values.nodeDocker.socketDir) -}}
{{- $_ := set $dood "nodeSelector" .Values.nodeDocker.nodeSelector -}}
{{- $_ := set $dood "socketGroup" .Values.nodeDocker.socketGroup -}}
{{- $_ := set $config "dood" $dood -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
