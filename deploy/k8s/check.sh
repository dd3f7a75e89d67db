#!/usr/bin/env bash
# `make k8s-check`: the Helm chart against a real Kubernetes API server, and KEDA scaling the workers on real lag.
# Run on this machine up to the chart's install; KEDA's operator does not build here (two of its dependencies are
# refused by the module proxy): deploy/README.md records what ran.
#
# Everything is built from the Go module proxy into $TOOLS and listens on 127.0.0.1 only:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver + kube-controller-manager (k8s.io/kubernetes), kwok (simulated
#   nodes and pods: no kubelet, no container runtime), KEDA's operator (github.com/kedacore/keda/v2).
# k8s.io/kubernetes and etcd pin their sibling modules with `replace => ./staging/...` / `=> ../api`: the module zips
# do not carry those folders, so each is built in a copy whose relative replaces point at the published versions.
# KEDA's own replaces are absolute, but `go install` refuses any: it is built in a copy too.
# k8s.io/kubernetes also ships a go.work (its staging workspace): builds run with GOWORK=off.
#
# Steps: etcd + API server (server-side validation and defaulting) → KEDA's CRDs → `helm install` the chart (workers
# autoscaled from 0, so KEDA's operator itself activates them: its external-metrics adapter is not run, because the
# aggregator cannot reach an adapter on loopback) → lag on the local Kafka's posts topic → the worker Deployment
# must leave 0 replicas within the timeout.
set -euo pipefail
: "${POSTLENS_HOME:?}" "${ETCD_VERSION:?}" "${KUBERNETES_VERSION:?}" "${KWOK_VERSION:?}" "${KEDA_VERSION:?}"
TOOLS="$POSTLENS_HOME/k8s-tools"
RUN="$(mktemp -d)"
CHART="$(cd "$(dirname "$0")/../helm/postlens" && pwd)"
HELM="$POSTLENS_HOME/deploy-tools/bin/helm"
STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"   # k8s.io/api etc. are published as v0.MINOR.PATCH
mkdir -p "$TOOLS/bin"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT

module_dir() { GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }

# build MODULE@VERSION REPLACED_VERSION PACKAGE... : go build in a copy, relative replaces → REPLACED_VERSION.
build() {
  local module="$1" replaced="$2"; shift 2
  local src copy; src="$(module_dir "$module")"; copy="$(mktemp -d)"
  cp -r "$src/." "$copy" && chmod -R u+w "$copy"
  (cd "$copy" && go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("."):
        print(r["Old"]["Path"])' | while read -r path; do go mod edit -replace="$path=$path@$replaced"; done
   for package in "$@"; do GOWORK=off GOFLAGS=-mod=mod go build -trimpath -ldflags "${LDFLAGS:-}" -o "$TOOLS/bin/" "$package" || exit 1; done)
  local status=$?  # set -e does not apply where the caller tests the result: the status is returned explicitly
  rm -rf "$copy"
  return "$status"
}

# One stamp per tool: a build the module proxy refuses (some of KEDA's dependencies are not served) is retried on
# the next run without rebuilding the others.
built() { [ -f "$TOOLS/.built-$1" ]; }
built "etcd-$ETCD_VERSION" || { time build "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$ETCD_VERSION" . \
  && mv "$TOOLS/bin/server" "$TOOLS/bin/etcd" && touch "$TOOLS/.built-etcd-$ETCD_VERSION"; }  # go names it after the path without /v3
# The API server reports the version it was built as (helm checks the chart's kubeVersion against it): a plain go
# build says v0.0.0-master, so the version is stamped as Kubernetes' own build does.
k8s_minor="${KUBERNETES_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"; k8s_version="k8s.io/component-base/version"
LDFLAGS="-X $k8s_version.gitVersion=$KUBERNETES_VERSION -X $k8s_version.gitMajor=1 -X $k8s_version.gitMinor=$k8s_minor"
built "kubernetes-$KUBERNETES_VERSION" || { time build "k8s.io/kubernetes@$KUBERNETES_VERSION" "$STAGING_VERSION" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager && touch "$TOOLS/.built-kubernetes-$KUBERNETES_VERSION"; }
LDFLAGS=""
built "kwok-$KWOK_VERSION" || { time build "sigs.k8s.io/kwok@$KWOK_VERSION" "$KWOK_VERSION" ./cmd/kwok \
  && touch "$TOOLS/.built-kwok-$KWOK_VERSION"; }
keda=1
built "keda-$KEDA_VERSION" || { time build "github.com/kedacore/keda/v2@$KEDA_VERSION" "$KEDA_VERSION" ./cmd/operator \
  && touch "$TOOLS/.built-keda-$KEDA_VERSION"; } || {
  keda=0; echo "KEDA's operator did not build (above): the chart is installed, scaling on lag is not checked" >&2; }

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 120); do if eval "$1" >/dev/null 2>&1; then return 0; fi; sleep 1; done; echo "timed out: $1" >&2; exit 1; }

# etcd and the API server, loopback only (no endpoint reconciler: it refuses a loopback address); one admin token;
# a service-account key pair.
etcd_port="$(port)"; peer_port="$(port)"; api_port="$(port)"
"$TOOLS/bin/etcd" --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" >"$RUN/etcd.log" 2>&1 & pids+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -days 1 \
  -keyout "$RUN/apiserver.key" -out "$RUN/apiserver.crt" 2>/dev/null
openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null && openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
token="$(openssl rand -hex 16)"; echo "$token,admin,admin,system:masters" >"$RUN/tokens.csv"
"$TOOLS/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none --secure-port "$api_port" --tls-cert-file "$RUN/apiserver.crt" \
  --tls-private-key-file "$RUN/apiserver.key" --token-auth-file "$RUN/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$RUN/sa.pub" \
  --service-account-signing-key-file "$RUN/sa.key" --service-cluster-ip-range 10.96.0.0/16 >"$RUN/apiserver.log" 2>&1 & pids+=($!)
cat >"$RUN/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: check, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$RUN/apiserver.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: check, context: {cluster: check, user: admin}}]
current-context: check
KUBECONFIG
export KUBECONFIG="$RUN/kubeconfig"
wait_for "curl -fsS --cacert $RUN/apiserver.crt -H 'Authorization: Bearer $token' https://127.0.0.1:$api_port/readyz"
"$TOOLS/bin/kube-controller-manager" --kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 --secure-port 0 \
  --controllers '*,-nodeipam' --service-account-private-key-file "$RUN/sa.key" --use-service-account-credentials=false \
  >"$RUN/controller-manager.log" 2>&1 & pids+=($!)
"$TOOLS/bin/kwok" --kubeconfig "$KUBECONFIG" --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --server-address 127.0.0.1:0 >"$RUN/kwok.log" 2>&1 & pids+=($!)

# A simulated GPU node for every pod of the chart; KEDA's CRDs from the module `make deploy-tools` fetched.
keda_src="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")"
cat >"$RUN/node.yaml" <<'NODE'
apiVersion: v1
kind: Node
metadata: {name: kwok-node-0, annotations: {kwok.x-k8s.io/node: fake}, labels: {type: kwok}}
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "110", nvidia.com/gpu: "4"}
  capacity: {cpu: "64", memory: 256Gi, pods: "110", nvidia.com/gpu: "4"}
NODE
# helm installs the node and the CRDs as a chart of plain manifests (no kubectl is built).
mkdir -p "$RUN/prereqs/templates" && cp "$RUN/node.yaml" "$keda_src"/config/crd/bases/keda.sh_*.yaml "$RUN/prereqs/templates/"
printf 'apiVersion: v2\nname: prereqs\nversion: 0.1.0\n' >"$RUN/prereqs/Chart.yaml"
"$HELM" install prereqs "$RUN/prereqs" --wait
if [ "$keda" = 1 ]; then
  "$TOOLS/bin/operator" --kubeconfig "$KUBECONFIG" --metrics-bind-address 127.0.0.1:0 \
    --health-probe-bind-address 127.0.0.1:0 >"$RUN/keda.log" 2>&1 & pids+=($!)
fi

# The chart, validated and defaulted by the server; Kafka is the local stack's.
topic="postlens.k8s-check.$(date +%s)"
time "$HELM" install pl "$CHART" --wait=false --set kafka.bootstrap=127.0.0.1:9092 --set kafka.securityProtocol=PLAINTEXT \
  --set secrets.existingSecret= --set kafka.topics.posts="$topic" --set autoscaling.minReplicas=0 \
  --set autoscaling.activationLagThreshold=5 --set autoscaling.pollingInterval=5 --set bootstrap.enabled=false \
  --set networkPolicy.enabled=true
"$HELM" get manifest pl | grep -c '^kind:'

[ "$keda" = 1 ] || { echo "chart installed and validated by the API server; KEDA not checked"; exit 1; }
# Lag: posts nobody consumes yet. KEDA must activate the workers (0 → ≥ 1 replica).
python3 -m stream publish <(for i in $(seq 1 50); do echo "{\"id\": \"k8s-check-$i\", \"text\": \"post $i\"}"; done) --topic "$topic"
wait_for "curl -fsS --cacert $RUN/apiserver.crt -H 'Authorization: Bearer $token' \
  https://127.0.0.1:$api_port/apis/apps/v1/namespaces/default/deployments/pl-postlens-worker | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)[\"spec\"].get(\"replicas\", 0) < 1)'"
echo "KEDA activated the workers on lag; logs in $RUN (kept: remove it)"; trap - EXIT; for pid in "${pids[@]}"; do kill "$pid"; done
