#!/usr/bin/env bash
# `make k8s-check`: the Helm chart against a real Kubernetes API server, and KEDA's operator scaling the workers on
# real Kafka lag (deploy/README.md records a run).
#
# Everything is built from the Go module proxy into $TOOLS and listens on 127.0.0.1 only:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kube-controller-manager and kube-scheduler (k8s.io/kubernetes),
#   kwok (simulated node and pods: no kubelet, no container runtime) and KEDA's operator (github.com/kedacore/keda/v2).
# k8s.io/kubernetes and etcd pin their sibling modules with `replace => ./staging/...` / `=> ../api`: the module zips
# do not carry those folders, so each is built in a copy whose relative replaces point at the published versions.
# KEDA's own replaces are absolute, but `go install` refuses any: it is built in a copy too.
# k8s.io/kubernetes also ships a go.work (its staging workspace): builds run with GOWORK=off.
#
# Steps: etcd + API server (server-side validation and defaulting), controller manager, scheduler, kwok's node →
# KEDA's CRDs → `helm install` the chart (workers autoscaled from 0) → KEDA's operator must (1) take the worker
# Deployment to 0 replicas without lag, (2) activate it (0 → ≥ 1 replica, the pod scheduled and made Ready by kwok)
# once posts wait on the local Kafka's topic, (3) take it back to 0 once the lag is consumed — by kcat committing
# the group's offsets, since kwok's pods run nothing. Each change of the replica count is printed with its time.
# Scaling 1 → N is the HPA's, on KEDA's external metric: its metrics adapter is not run (the aggregator cannot
# reach an adapter on loopback), so that step is not checked.
set -euo pipefail
: "${POSTLENS_HOME:?}" "${ETCD_VERSION:?}" "${KUBERNETES_VERSION:?}" "${KWOK_VERSION:?}" "${KEDA_VERSION:?}"
TOOLS="$POSTLENS_HOME/k8s-tools"
RUN="$(mktemp -d)"
CHART="$(cd "$(dirname "$0")/../helm/postlens" && pwd)"
HELM="$POSTLENS_HOME/deploy-tools/bin/helm"
STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"   # k8s.io/api etc. are published as v0.MINOR.PATCH
mkdir -p "$TOOLS/bin"
pids=() names=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
# serve NAME COMMAND...: COMMAND in the background, its output in $RUN/NAME.log.
serve() { local name="$1"; shift; "$@" >"$RUN/$name.log" 2>&1 & pids+=($!); names+=("$name"); }
# Each server must still be running (kwok, for one, exits on a configuration it dislikes, and nothing would say so).
alive() { for i in "${!pids[@]}"; do kill -0 "${pids[$i]}" 2>/dev/null \
  || { echo "${names[$i]} exited:" >&2; tail -5 "$RUN/${names[$i]}.log" >&2; exit 1; }; done; }

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

# One stamp per tool: a build that fails (the module proxy refused two of KEDA v2.18.3's dependencies) is retried on
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
# The scheduler has a stamp of its own: it came after the API server's (long) build, which it did not redo.
built "kube-scheduler-$KUBERNETES_VERSION" || { time build "k8s.io/kubernetes@$KUBERNETES_VERSION" "$STAGING_VERSION" \
  ./cmd/kube-scheduler && touch "$TOOLS/.built-kube-scheduler-$KUBERNETES_VERSION"; }
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
serve etcd "$TOOLS/bin/etcd" --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port"
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -days 1 \
  -keyout "$RUN/apiserver.key" -out "$RUN/apiserver.crt" 2>/dev/null
openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null && openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
token="$(openssl rand -hex 16)"; echo "$token,admin,admin,system:masters" >"$RUN/tokens.csv"
serve apiserver "$TOOLS/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none --secure-port "$api_port" --tls-cert-file "$RUN/apiserver.crt" \
  --tls-private-key-file "$RUN/apiserver.key" --token-auth-file "$RUN/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$RUN/sa.pub" \
  --service-account-signing-key-file "$RUN/sa.key" --service-cluster-ip-range 10.96.0.0/16
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
serve controller-manager "$TOOLS/bin/kube-controller-manager" --kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 \
  --secure-port 0 --controllers '*,-nodeipam' --service-account-private-key-file "$RUN/sa.key" \
  --use-service-account-credentials=false
serve scheduler "$TOOLS/bin/kube-scheduler" --kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 --secure-port 0
# kwok plays the kubelet of the node below: its stages (from its module, as kwokctl's "fast" ones) make the node
# Ready and a scheduled pod Running and Ready at once, and remove deleted pods. No container is run.
kwok_stages="$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")/kustomize/stage"
for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete \
  pod/fast/pod-delete; do cat "$kwok_stages/$stage.yaml"; echo "---"; done >"$RUN/kwok-stages.yaml"
serve kwok "$TOOLS/bin/kwok" --kubeconfig "$KUBECONFIG" --config "$RUN/kwok-stages.yaml" --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake --server-address 127.0.0.1:0

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
# KEDA's operator outside the cluster: all namespaces watched, its own objects in default, no leader election (one
# replica). Its gRPC metrics service (for the adapter, not run) refuses to start without a TLS pair: the API
# server's self-signed one.
if [ "$keda" = 1 ]; then
  mkdir "$RUN/keda-certs" && cp "$RUN/apiserver.crt" "$RUN/keda-certs/ca.crt" && cp "$RUN/apiserver.crt" "$RUN/keda-certs/tls.crt" \
    && cp "$RUN/apiserver.key" "$RUN/keda-certs/tls.key"
  WATCH_NAMESPACE="" KEDA_CLUSTER_OBJECT_NAMESPACE=default POD_NAMESPACE=default serve keda "$TOOLS/bin/operator" \
    --kubeconfig "$KUBECONFIG" --leader-elect=false --metrics-bind-address 127.0.0.1:0 \
    --health-probe-bind-address 127.0.0.1:0 --metrics-service-bind-address 127.0.0.1:0 --cert-dir "$RUN/keda-certs"
fi

# The chart, validated and defaulted by the server; Kafka is the local stack's, on a topic and consumer group of
# this run's own. The topic is created first, with the partitions the chart names, as a worker's start does.
run_id="$(date +%s)"; topic="postlens.k8s-check.$run_id"; group="postlens-k8s-check-$run_id"; partitions=3
POSTLENS_KAFKA_BOOTSTRAP=127.0.0.1:9092 POSTLENS_TOPIC_POSTS="$topic" POSTLENS_TOPIC_PARTITIONS="$partitions" python3 -c 'import asyncio
from postlens.io.kafka import ensure_topics
from postlens.settings import get_settings
settings = get_settings()
asyncio.run(ensure_topics(settings, {settings.topic_posts: settings.topic_partitions}))'
time "$HELM" install pl "$CHART" --wait=false --set kafka.bootstrap=127.0.0.1:9092 --set kafka.securityProtocol=PLAINTEXT \
  --set secrets.existingSecret= --set kafka.topics.posts="$topic" --set kafka.consumerGroup="$group" \
  --set kafka.partitions="$partitions" --set autoscaling.minReplicas=0 --set autoscaling.activationLagThreshold=5 \
  --set autoscaling.pollingInterval=5 --set autoscaling.cooldownPeriod=20 --set bootstrap.enabled=false \
  --set networkPolicy.enabled=true
"$HELM" get manifest pl | grep -c '^kind:'

[ "$keda" = 1 ] || { echo "chart installed and validated by the API server; KEDA not checked"; exit 1; }

# The worker Deployment as KEDA scales it: replicas asked for (spec) and pods Ready (kwok's), sampled every 2 s
# from $start; each change is printed.
workers() { curl -fsS --cacert "$RUN/apiserver.crt" -H "Authorization: Bearer $token" \
  "https://127.0.0.1:$api_port/apis/apps/v1/namespaces/default/deployments/pl-postlens-worker" \
  | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["spec"].get("replicas", 0), d["status"].get("readyReplicas", 0))'; }
seen=""; start=$SECONDS
# until_workers TEST LIMIT: sample until `[ $replicas TEST ] && [ $ready TEST ]` (e.g. "-ge 1"), at most LIMIT s.
until_workers() {
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    alive; read -r replicas ready < <(workers)
    if [ "$replicas $ready" != "$seen" ]; then
      echo "  t=$((SECONDS - start)) s: $replicas worker replicas, $ready ready"; seen="$replicas $ready"; fi
    if [ "$replicas" $1 ] && [ "$ready" $1 ]; then return 0; fi
    sleep 2
  done
  echo "timed out after $2 s waiting for worker replicas $1 (KEDA's log: $RUN/keda.log)" >&2; exit 1
}

# The API server defaults the Deployment (no replicas in the chart: KEDA owns them) to 1 replica; without lag, KEDA
# takes it to minReplicas, 0.
until_workers "-eq 0" 120
echo "KEDA scaled the workers to 0 without lag"
# Lag: posts nobody consumes yet. KEDA's operator must activate the workers (0 → ≥ 1 replica) by itself.
published=$SECONDS
python3 -m stream publish <(for i in $(seq 1 50); do echo "{\"id\": \"k8s-check-$i\", \"text\": \"post $i\"}"; done) --topic "$topic"
until_workers "-ge 1" 120
echo "KEDA activated the workers on lag: $replicas replica(s), $ready ready, $((SECONDS - published)) s after 50 posts"
# The pods are kwok's: nothing in them consumes. kcat, in the workers' consumer group, reads the topic to its end
# and commits, as the workers would; without lag, after cooldownPeriod, KEDA must take the workers back to 0.
kcat -C -b 127.0.0.1:9092 -G "$group" -o beginning -e -q "$topic" >/dev/null
consumed=$SECONDS
until_workers "-eq 0" 180
echo "KEDA scaled the workers back to 0 $((SECONDS - consumed)) s after the lag was consumed (cooldownPeriod 20 s)"
trap - EXIT; for pid in "${pids[@]}"; do kill "$pid"; done; echo "logs in $RUN (kept: remove it)"
