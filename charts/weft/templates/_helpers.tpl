{{/* Labels every object carries. */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "weft.controller.selector" -}}
app.kubernetes.io/name: weft-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "weft.node.selector" -}}
app.kubernetes.io/name: weft-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* <registry>/<name>:<tag>; call with (dict "root" $ "name" "weft-proxy") */}}
{{- define "weft.image" -}}
{{- $registry := .root.Values.image.registry | trimSuffix "/" -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .name .root.Values.image.tag -}}
{{- else -}}
{{- printf "%s:%s" .name .root.Values.image.tag -}}
{{- end -}}
{{- end -}}

{{/* host:port, with brackets around an IPv6 host. Call with (list host port). */}}
{{- define "weft.hostPort" -}}
{{- $host := index . 0 | toString -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host (index . 1) -}}
{{- else -}}
{{- printf "%s:%v" $host (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* Where a probe reaches a server bound to this address (hostNetwork: kubelet shares the netns). */}}
{{- define "weft.probeHost" -}}
{{- $bind := . | toString -}}
{{- if or (eq $bind "0.0.0.0") (eq $bind "127.0.0.1") -}}
127.0.0.1
{{- else if or (eq $bind "::") (eq $bind "::1") -}}
::1
{{- else -}}
{{ $bind }}
{{- end -}}
{{- end -}}

{{/* The controller's in-cluster address the node proxies dial (TLS; its certificate holds this name). */}}
{{- define "weft.controller.url" -}}
{{- printf "https://weft-controller.%s.svc.%s:%v" .Release.Namespace .Values.clusterDomain .Values.controller.configPort -}}
{{- end -}}

{{/* The API server URL weft-cni (on the host network) uses. */}}
{{- define "weft.cni.apiServer" -}}
{{- if .Values.cni.apiServer -}}
{{- .Values.cni.apiServer -}}
{{- else -}}
{{- $svc := lookup "v1" "Service" "default" "kubernetes" -}}
{{- if and $svc $svc.spec.clusterIP -}}
{{- $port := 443 -}}
{{- range $svc.spec.ports -}}{{- if eq .name "https" -}}{{- $port = .port -}}{{- end -}}{{- end -}}
{{- printf "https://%s" (include "weft.hostPort" (list $svc.spec.clusterIP $port)) -}}
{{- else -}}
https://10.96.0.1:443
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Host path of the kubeconfig projected into the node pod (kubelet's layout), $(POD_UID) expanded by kubelet. */}}
{{- define "weft.cni.kubeconfigPath" -}}
{{- printf "%s/pods/$(POD_UID)/volumes/kubernetes.io~projected/cni-kubeconfig/kubeconfig" (.Values.cni.kubeletRootDir | trimSuffix "/") -}}
{{- end -}}
