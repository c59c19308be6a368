#!/usr/bin/env bash
# A real one-node Kubernetes 1.37 cluster on this machine: etcd, kube-apiserver,
# kube-controller-manager (every controller), kube-scheduler, containerd + runc, kubelet and
# kube-proxy, with a CNI bridge. It runs real Pods from images imported without a registry. For
# the real-node tests (tests/node/) and for trying the operator's image, chart and manifests by
# hand. Needs root, Linux, and the Debian packages containerd, runc, containernetworking-plugins,
# nftables and busybox-static (.ci/run installs them).
#
#   hack/node/node.sh up               start (idempotent); prints the admin kubeconfig's path
#   hack/node/node.sh import FILE...   import OCI image archives into the node (hack/image/build.py)
#   hack/node/node.sh status           what runs, and where
#   hack/node/node.sh check            whether this machine can run the node (exit 1 and why)
#   hack/node/node.sh down             stop everything, undo every change to the host, and check
#                                      the host is as it was before `up` (exit 1 if not)
#   hack/node/node.sh guard            for test harnesses: wait for the node to be free, `up`,
#                                      print "ready KUBECONFIG" on stdout, then wait until stdin
#                                      closes (the test process ended, however it ended), `down`
#
# What it owns, and nothing else (ports below the ephemeral range 32768-60999, so no other
# process's free port can take one; nothing listens outside loopback and the bridge):
#   bridge     inboxnode0, 10.244.0.1/24 = the node's IP; Pods in 10.244.0.0/24, Services in
#              10.245.0.0/24. Forwarding is enabled on the bridge only (not ip_forward).
#   loopback   etcd 26479 (peer 26480), controller-manager 26457, scheduler 26459, kubelet
#              healthz 26448, kube-proxy metrics 26449 and healthz 26456, CRI streaming 26410
#   bridge IP  kube-apiserver 26443, kubelet 26450
#   files      $INBOX_NODE_DIR (default /var/lib/inbox-operator-node): every process's state,
#              containerd's root and state, kubelet's root dir, Pod logs, CNI config and IPAM
# What the node does to the host beyond that, each undone by `down` (verified against a snapshot
# taken by `up`, see `snapshot` below):
#   - sysctls kubelet sets at start and cannot be told not to (vm.overcommit_memory,
#     vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.root_maxkeys,
#     kernel.keys.root_maxbytes): restored to the values `up` found;
#   - the nftables tables of kube-proxy (`ip kube-proxy`, `ip6 kube-proxy`; nftables mode: no
#     iptables chains, so no KUBE-FIREWALL rule dropping non-loopback packets to 127.0.0.0/8, and
#     kubelet's own iptables chains are off, makeIPTablesUtilChains: false);
#   - the kubepods cgroups kubelet makes in every hierarchy, kubelet's and containerd's mounts
#     (secret volumes, overlay root filesystems, network namespaces), and the paths kubelet,
#     containerd and CNI hard-code: /var/log/containers, /var/lib/kubelet (the device-plugin
#     socket), /run/containerd (shim sockets), /var/lib/cni (CNI result cache) — removed only
#     if `up` did not find them;
#   - the processes: every one started here by PID, the containerd shims by their socket, and
#     every process in the kubepods cgroups.
# `down` ends by comparing the host with the snapshot `up` took before touching anything: the
# network links, addresses and routes, the mount table, the cgroups at the top of every
# hierarchy, the whole nftables ruleset and iptables-legacy rules, the sysctls above, the fixed
# paths, listeners on the node's ports or address, network namespaces, established connections
# of the node's addresses (conntrack) — and that no process of the node is left. It prints
# "host clean" or each difference, and fails if there is one.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${INBOX_NODE_DIR:-/var/lib/inbox-operator-node}"
K8S_VERSION=1.37.2

NODE_NAME=inbox-node
BRIDGE=inboxnode0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.245.0.0/24
SERVICE_IP=10.245.0.1
PORT_ETCD=26479 PORT_ETCD_PEER=26480 PORT_APISERVER=26443 PORT_KCM=26457 PORT_SCHEDULER=26459
PORT_KUBELET=26450 PORT_KUBELET_HEALTHZ=26448 PORT_PROXY_METRICS=26449 PORT_PROXY_HEALTHZ=26456
PORT_STREAM=26410
PORTS=("$PORT_ETCD" "$PORT_ETCD_PEER" "$PORT_APISERVER" "$PORT_KCM" "$PORT_SCHEDULER" "$PORT_KUBELET"
  "$PORT_KUBELET_HEALTHZ" "$PORT_PROXY_METRICS" "$PORT_PROXY_HEALTHZ" "$PORT_STREAM")

# The processes, in the order they start; `down` stops kubelet first, then the others at once.
COMPONENTS=(etcd apiserver controller-manager scheduler containerd kubelet kube-proxy)
# Set by kubelet's container manager (setupKernelTunables), whatever its configuration.
# The others are those kube-proxy and the CNI plugins would set if configured otherwise (ours
# leave them alone; the snapshot shows it).
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.forwarding net.ipv6.conf.all.forwarding net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Paths outside $DIR that kubelet, containerd or the CNI plugins use whatever they are told.
FIXED_PATHS=(/var/log/containers /var/log/pods /run/containerd /var/lib/cni /var/lib/kubelet
  /var/lib/containerd /opt/containerd /etc/cni /run/netns)
NFT_TABLES=("ip kube-proxy" "ip6 kube-proxy")
IMAGES_PAUSE=registry.k8s.io/pause:3.10

log() { echo "node: $*" >&2; }
die() { log "$*"; exit 1; }

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n $p ]] && running "$p"; }

# ---------------------------------------------------------------------------------------------
# The host's state, as `up` found it and as `down` must leave it. One section per kind of
# change; `down` compares the two snapshots line by line.
snapshot() {
  echo "## links"
  ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort
  echo "## addresses"
  ip -o addr show | awk '{ print $2, $3, $4 }' | sort
  echo "## routes"
  { ip -4 route show table all; ip -6 route show table all; } 2>/dev/null | sort
  echo "## mounts"
  awk '{ print $5 }' /proc/self/mountinfo | sort
  echo "## cgroups"
  local h
  for h in /sys/fs/cgroup/*/; do
    find "$h" -mindepth 1 -maxdepth 1 -type d -printf "$h%f\n" 2>/dev/null
  done | sort
  echo "## nftables"
  nft list ruleset 2>/dev/null || true
  echo "## iptables-legacy"
  if command -v iptables-legacy-save >/dev/null; then
    { iptables-legacy-save; ip6tables-legacy-save; } 2>/dev/null | grep -v '^#' || true
  fi
  echo "## sysctls"
  local s
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s" 2>/dev/null || echo absent)"; done
  echo "## paths"
  local p
  for p in "${FIXED_PATHS[@]}" "$DIR"; do [[ -e $p || -L $p ]] && echo "$p"; done
  echo "## listeners"
  ss -Hltnu 2>/dev/null | awk '{ print $1, $5 }' | grep -E ":($(IFS='|'; echo "${PORTS[*]}"))\$|$NODE_IP:" | sort || true
  echo "## netns"
  ls /run/netns 2>/dev/null || true
  # Closing connections (TIME_WAIT and the like) expire by themselves within two minutes;
  # an established one to or from the node's addresses would outlive it.
  echo "## conntrack: established connections of the node's addresses"
  awk '$3 == "tcp" && $6 == "ESTABLISHED" && /src=10\.24[45]\./' /proc/net/nf_conntrack 2>/dev/null | wc -l
}

# Processes of ours still alive: started here (PID files), containerd shims serving this
# containerd, anything in the kubepods cgroups, anything running from $DIR.
our_processes() {
  local c p
  for c in "${COMPONENTS[@]}"; do
    p=$(pid_of "$c")
    [[ -n $p ]] && running "$p" && echo "$p $c"
  done
  for p in $(pgrep -f "containerd-shim.*$DIR/containerd/containerd.sock" || true); do echo "$p containerd-shim"; done
  for p in $(pod_pids); do echo "$p pod process"; done
  # Anything else running from $DIR (not this script, whose arguments never name it).
  for p in $(pgrep -f -- "$DIR/" || true); do
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "node/node.sh" && continue
    echo "$p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)"
  done
  return 0
}

pod_pids() {
  local f
  for f in $(find /sys/fs/cgroup/*/kubepods* -name cgroup.procs 2>/dev/null); do cat "$f" 2>/dev/null; done | sort -u
}

# ---------------------------------------------------------------------------------------------
check_prerequisites() {
  [[ $(uname -s) == Linux ]] || die "needs Linux"
  [[ $(id -u) -eq 0 ]] || die "needs root (kubelet, containerd and the bridge change the host)"
  local missing=() t
  for t in containerd containerd-shim-runc-v2 runc ctr nft ip ss openssl busybox python3 sysctl pgrep; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  for t in bridge host-local loopback; do [[ -x /usr/lib/cni/$t ]] || missing+=("/usr/lib/cni/$t"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    die "missing ${missing[*]}: apt-get install containerd runc containernetworking-plugins nftables busybox-static"
  fi
  [[ -d /sys/fs/cgroup/memory ]] || die "needs cgroup v1 with the memory controller (this script configures kubelet for v1)"
}

check_ports_free() {
  local taken
  taken=$(ss -Hltnu | awk '{ print $5 }' | grep -E ":($(IFS='|'; echo "${PORTS[*]}"))\$" || true)
  [[ -z $taken ]] || die "ports of the node are taken by another process: $taken"
}

pki() {
  local d=$DIR/pki
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=inbox-node-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # cert NAME SUBJECT EXTENSIONS
  cert() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/$1.key" \
      -out "$d/$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 7 \
      -out "$d/$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
    rm -f "$d/$1.csr"
  }
  cert apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$NODE_IP,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth"
  cert kubelet "/CN=$NODE_NAME" \
    "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

# kubeconfig NAME TOKEN: a kubeconfig for the node's apiserver, verifying it with the node's CA.
kubeconfig() {
  cat >"$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    server: https://$NODE_IP:$PORT_APISERVER
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $1
  user:
    token: $2
contexts:
- name: $1
  context: {cluster: $NODE_NAME, user: $1}
current-context: $1
EOF
}

token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

configure() {
  mkdir -p "$DIR"/{etcd,kubelet,pods,cni/net.d,cni/ipam,containerd,kcm,logs}
  pki
  local admin kcm sched proxy kubelet
  admin=$(token); kcm=$(token); sched=$(token); proxy=$(token); kubelet=$(token)
  # Each component as the user the built-in RBAC (and the Node authorizer) expects.
  cat >"$DIR/tokens.csv" <<EOF
$admin,admin,admin,system:masters
$kcm,system:kube-controller-manager,kcm
$sched,system:kube-scheduler,scheduler
$proxy,system:kube-proxy,kube-proxy
$kubelet,system:node:$NODE_NAME,kubelet,system:nodes
EOF
  kubeconfig admin "$admin"
  kubeconfig controller-manager "$kcm"
  kubeconfig scheduler "$sched"
  kubeconfig kube-proxy "$proxy"
  kubeconfig kubelet "$kubelet"

  cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
# Plugins that would touch paths outside \$DIR (/opt/containerd) or that nothing here uses.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$DIR/containerd/containerd.sock"
[ttrpc]
  address = "$DIR/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGES_PAUSE"
  # The VM lacks CAP_SYS_RESOURCE: no container may ask for a lower oom_score_adj than ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "$PORT_STREAM"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF

  # The bridge exists before kubelet starts (its IP is the node's); the plugin only adds Pods
  # to it. No ipMasq and no portmap: no iptables rules from CNI.
  cat >"$DIR/cni/net.d/10-inbox-node.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "inbox-node",
  "plugins": [{
    "type": "bridge",
    "bridge": "$BRIDGE",
    "isGateway": false,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$DIR/cni/ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.250", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]
    }
  }]
}
EOF

  cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $PORT_KUBELET
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $PORT_KUBELET_HEALTHZ
tlsCertFile: $DIR/pki/kubelet.crt
tlsPrivateKeyFile: $DIR/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
podLogsDir: $DIR/pods
# This VM: cgroup v1 only, no systemd as PID 1, no CAP_SYS_RESOURCE.
failCgroupV1: false
cgroupDriver: cgroupfs
oomScoreAdj: 0
failSwapOn: false
# No iptables chains of kubelet's (KUBE-IPTABLES-HINT, KUBE-FIREWALL): kube-proxy runs in nftables
# mode and nothing here needs them.
makeIPTablesUtilChains: false
# Images cannot be pulled again here: never collect them, and evict nothing for a full disk
# this machine's other users fill.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
# Secret updates reach mounted volumes within ~10-15 s (the default 1 min makes tests slow).
syncFrequency: 10s
serializeImagePulls: false
clusterDomain: cluster.local
EOF

  cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
healthzBindAddress: 127.0.0.1:$PORT_PROXY_HEALTHZ
metricsBindAddress: 127.0.0.1:$PORT_PROXY_METRICS
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
# 0: leave the host's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# start NAME COMMAND...: in the background, its own session, output to logs/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s.
wait_until() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# Its discovery cache in $DIR too, not in ~/.kube/cache.
kubectl_() {
  "$ASSETS/kubectl" --kubeconfig "$DIR/admin.kubeconfig" --cache-dir "$DIR/kubectl-cache" \
    --request-timeout=10s "$@"
}

apiserver_ready() { [[ $(kubectl_ get --raw /readyz 2>/dev/null) == ok ]]; }
node_ready() {
  [[ $(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
default_sa() { kubectl_ -n default get serviceaccount default; }

# Components die with their log's tail shown.
check_alive() {
  local c
  for c in "$@"; do
    alive "$c" || { log "$c exited; its log:"; tail -n 30 "$DIR/logs/$c.log" >&2; return 1; }
  done
}

up() {
  check_prerequisites
  if [[ -f $DIR/ready ]] && alive apiserver && alive kubelet && alive containerd; then
    log "already up"
    echo "$DIR/admin.kubeconfig"
    return 0
  fi
  if [[ -e $DIR ]]; then
    log "leftovers of an earlier node in $DIR: taking them down first"
    down || true
  fi
  check_ports_free
  local started
  started=$(date +%s)
  ASSETS="$("$ROOT/hack/envtest-assets.sh" "$K8S_VERSION")"
  NODE_ASSETS="$("$HERE/assets.sh" "$K8S_VERSION")"
  local baseline
  baseline=$(snapshot)
  mkdir -p "$DIR"
  echo "$baseline" >"$DIR/baseline"
  configure

  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Pods reach Services (DNAT back onto the bridge): forward what comes in on the bridge only.
  sysctl -q -w "net.ipv4.conf.$BRIDGE.forwarding=1"

  start etcd "$ASSETS/etcd" --data-dir "$DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$PORT_ETCD" --advertise-client-urls "http://127.0.0.1:$PORT_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" \
    --initial-cluster "default=http://127.0.0.1:$PORT_ETCD_PEER"
  start apiserver "$ASSETS/kube-apiserver" --etcd-servers "http://127.0.0.1:$PORT_ETCD" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$PORT_APISERVER" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-client-certificate "$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$DIR/pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP --profiling=false
  wait_until 90 "kube-apiserver /readyz" apiserver_ready || { check_alive etcd apiserver; return 1; }

  start controller-manager "$ASSETS/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --use-service-account-credentials=true --service-account-private-key-file "$DIR/pki/sa.key" \
    --root-ca-file "$DIR/pki/ca.crt" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$PORT_KCM" --cert-dir "$DIR/kcm" --profiling=false
  start scheduler "$NODE_ASSETS/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$PORT_SCHEDULER" --profiling=false
  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_until 30 "containerd" ctr --address "$DIR/containerd/containerd.sock" version || { check_alive containerd; return 1; }
  import_images
  start kubelet "$NODE_ASSETS/kubelet" --config "$DIR/kubelet.yaml" \
    --kubeconfig "$DIR/kubelet.kubeconfig" --root-dir "$DIR/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start kube-proxy "$NODE_ASSETS/kube-proxy" --config "$DIR/kube-proxy.yaml"
  wait_until 120 "node $NODE_NAME Ready" node_ready || { check_alive "${COMPONENTS[@]}"; return 1; }
  # The default ServiceAccount (Pods need it) comes from the controller-manager.
  wait_until 60 "the default ServiceAccount" default_sa || { check_alive controller-manager; return 1; }
  check_alive "${COMPONENTS[@]}"
  touch "$DIR/ready"
  log "up in $(( $(date +%s) - started ))s: Kubernetes v$K8S_VERSION, node $NODE_NAME at $NODE_IP, apiserver https://$NODE_IP:$PORT_APISERVER"
  echo "$DIR/admin.kubeconfig"
}

# The pause image (the sandbox of every Pod) and a shell image, both from Debian's busybox-static;
# the operator's image is imported by its own build (hack/image/build.py) or by the tests.
import_images() {
  local cache="${INBOX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbox-operator}/images"
  mkdir -p "$cache"
  python3 "$ROOT/hack/image/build.py" busybox --out "$cache/busybox.tar" >&2
  python3 "$ROOT/hack/image/build.py" pause --out "$cache/pause.tar" >&2
  import "$cache/pause.tar" "$cache/busybox.tar"
}

import() {
  local f
  for f in "$@"; do
    ctr --address "$DIR/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$f" >&2
  done
}

# running PID: alive and not a zombie (an exited child waits for init to reap it).
running() { [[ -e /proc/$1 ]] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

# stop NAME...: SIGTERM to each, up to 3 s for all of them, then SIGKILL (the node keeps no
# state: kube-apiserver's graceful shutdown, waiting out its watches, is not worth its ~15 s).
stop() {
  local name p pids=() n=0
  for name in "$@"; do
    p=$(pid_of "$name")
    [[ -n $p ]] && running "$p" && { kill -TERM "$p" 2>/dev/null || true; pids+=("$p"); }
  done
  while (( n < 15 )); do
    local left=()
    for p in "${pids[@]}"; do running "$p" && left+=("$p"); done
    [[ ${#left[@]} -eq 0 ]] && break
    pids=("${left[@]}")
    sleep 0.2; n=$((n + 1))
  done
  for p in "${pids[@]}"; do running "$p" && kill -KILL "$p" 2>/dev/null; done
  for name in "$@"; do rm -f "$DIR/$name.pid"; done
  return 0
}

down() {
  local baseline=""
  [[ -f $DIR/baseline ]] && baseline=$(cat "$DIR/baseline")
  local started
  started=$(date +%s)
  # kubelet first, so that nothing restarts the containers being stopped.
  stop kubelet
  # The Pods' processes, then the shims that watched them, then the rest.
  local n=0 pids
  while pids=$(pod_pids) && [[ -n $pids ]] && (( n < 25 )); do
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2; n=$((n + 1))
  done
  n=0
  while pids=$(pgrep -f "containerd-shim.*$DIR/containerd/containerd.sock") && (( n < 25 )); do
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2; n=$((n + 1))
  done
  # Nothing is kept: the rest together.
  stop "${COMPONENTS[@]}"

  # Mounts under $DIR and the hard-coded paths, deepest first.
  local m
  for m in $(awk '{ print $5 }' /proc/self/mountinfo | grep -E "^($DIR|/run/containerd|/var/lib/kubelet|/run/netns)(/|$)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
  # kubelet's cgroups, in every hierarchy, deepest first.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} \; 2>/dev/null || true
  local t
  for t in "${NFT_TABLES[@]}"; do
    if nft list table $t >/dev/null 2>&1; then nft delete table $t; fi
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # The host sides of the Pods' veth pairs go with their namespaces; wait for them.
  n=0
  while ip -o link show type veth 2>/dev/null | grep -q "master $BRIDGE" && (( n < 25 )); do sleep 0.2; n=$((n + 1)); done

  # Connections of the Pods and the node's processes close as they die; give the kernel a
  # moment to see them closed (the snapshot counts established ones).
  n=0
  while (( n < 50 )) && awk '$3 == "tcp" && $6 == "ESTABLISHED" && /src=10\.24[45]\./ { found = 1 } END { exit !found }' /proc/net/nf_conntrack 2>/dev/null; do
    sleep 0.2; n=$((n + 1))
  done

  if [[ -n $baseline ]]; then
    # Sysctls as they were.
    local line key value
    while IFS= read -r line; do
      key=${line%%=*}; value=${line#*=}
      [[ $value == absent ]] && continue
      [[ $(sysctl -n "$key" 2>/dev/null) == "$value" ]] || sysctl -q -w "$key=$value" || log "cannot restore $key"
    done < <(sed -n '/^## sysctls$/,/^## /{/^## /d;p}' <<<"$baseline")
    # Fixed paths that were not there.
    local p
    for p in "${FIXED_PATHS[@]}"; do
      if [[ -e $p || -L $p ]] && ! grep -qxF "$p" <<<"$(sed -n '/^## paths$/,/^## /p' <<<"$baseline")"; then
        rm -rf "$p"
      fi
    done
  fi
  rm -rf "$DIR"
  local left
  left=$(our_processes)
  if [[ -z $baseline ]]; then
    log "down in $(( $(date +%s) - started ))s (no baseline: nothing to compare the host with)"
    [[ -z $left ]] || { log "still running: $left"; return 1; }
    return 0
  fi
  local diff
  diff=$(diff <(echo "$baseline") <(snapshot) || true)
  if [[ -z $diff && -z $left ]]; then
    log "down in $(( $(date +%s) - started ))s; host clean: no process of the node left, and links, addresses, routes, mounts, cgroups, nftables, iptables-legacy, sysctls, paths, listeners and network namespaces as before 'up'"
    return 0
  fi
  log "down in $(( $(date +%s) - started ))s; the host is NOT as before 'up':"
  [[ -z $left ]] || log "processes still running: $left"
  [[ -z $diff ]] || { echo "$diff" | sed 's/^/node:   /' >&2; }
  return 1
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: not running"; fi
  done
  [[ -f $DIR/ready ]] && echo "kubeconfig: $DIR/admin.kubeconfig"
  return 0
}

# For a test harness: one node at a time on this host. Waits (up to INBOX_NODE_WAIT seconds,
# default 900) while another guard's node is up, brings the node up, prints "ready KUBECONFIG"
# (or "failed"), then blocks reading stdin. When the harness ends, however it ends, the kernel
# closes the pipe and the node goes down. Signals are ignored: Ctrl-C of the tests must not
# skip the teardown.
guard() {
  trap '' INT TERM HUP PIPE
  local waited=0 limit=${INBOX_NODE_WAIT:-900}
  while [[ -f $DIR/guard.pid ]] && running "$(cat "$DIR/guard.pid")"; do
    (( waited == 0 )) && log "another run's node is up (guard $(cat "$DIR/guard.pid")); waiting up to ${limit}s"
    (( waited >= limit )) && { echo "failed: the node is busy"; exit 1; }
    # The harness is gone (its end of the pipe closed): nobody needs a node any more.
    if read -r -t 0; then exit 0; fi
    sleep 2; waited=$((waited + 2))
  done
  if [[ -f $DIR/ready ]] && alive apiserver; then
    echo "failed: a node started by hand is up; take it down first (hack/node/node.sh down)"
    exit 1
  fi
  local kubeconfig
  if kubeconfig=$(up); then
    echo $$ >"$DIR/guard.pid"
    # The harness may be gone already: then the read below ends at once.
    echo "ready $kubeconfig" || true
  else
    echo "failed: see the log above" || true
    down || true
    exit 1
  fi
  # The harness stops reading; our output goes to stderr from here on.
  exec 1>&2
  cat >/dev/null || true
  down
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  import) import "$@" ;;
  guard) guard ;;
  check) check_prerequisites ;;
  snapshot) snapshot ;;
  *) echo "usage: $0 up|down|status|check|import FILE...|guard|snapshot" >&2; exit 2 ;;
esac
