#!/usr/bin/env bash
# ctr_run.sh: a real containerd (Debian's, run from its package without
# installing it) with lmshim registered as runtime io.containerd.lmshim.v1,
# and `ctr` driving it the way a user does:
#   - an OCI image built here from busybox-static, imported with
#     `ctr images import`;
#   - `ctr run --rm` prints the container's output and returns its exit
#     status, the shim booting the utility VM for it (QEMU);
#   - `ctr run -d`, then `ctr task exec` (exit status and output), `ctr
#     task ps`, `pause`/`resume`, `metrics`, a containerd restart that
#     finds the task running, `ctr task kill`, and `ctr task delete`, with
#     `ctr events` seeing each topic;
#   - runtime options (--runtime-config-path), good and bad;
#   - a shim killed under its task: containerd cleans up (`lmshim delete`),
#     and its VM goes with it;
#   - a container that outgrows its memory limit: /tasks/oom;
#   - a pod (the CRI's annotations): its sandbox and an app container are
#     served by one shim and run in one VM;
#   - a migration between two containerds (lmctl migrate --src-containerd
#     --dst-containerd): afterwards the destination's containerd lists the
#     task RUNNING under its new ID and drives it (exec, kill, delete), the
#     source's lists nothing.
# Everything lives in a temp folder (containerd's root, state and socket);
# every process started is stopped and the folder removed at the end.
#
#   ctr_run.sh LMSHIM FETCH_CTR CTR_DIR KERNEL INITRAMFS LMCTL
# Exit 0 passed, 77 skipped (no QEMU, no guest image, no containerd
# package), anything else failed.
set -uo pipefail
lmshim=$(readlink -f "$1") fetch=$2 ctrdir=$3 kernel=$4 initramfs=$5 lmctl=$(readlink -f "$6")

skip() { echo "# skipped: $*"; exit 77; }
[ -x /usr/bin/qemu-system-x86_64 ] || skip "no qemu-system-x86_64"
[ -r "$kernel" ] && [ -r "$initramfs" ] || skip "no guest image ($kernel, $initramfs)"
[ -x /bin/busybox ] || skip "no /bin/busybox (busybox-static)"
bash "$fetch" "$ctrdir" >/dev/null || skip "Debian's containerd package cannot be had"
bin=$ctrdir/root/usr/bin
[ -x "$bin/containerd" ] || skip "no containerd in the package"

t=$(mktemp -d /tmp/lm-ctr-XXXXXX)
sock=$t/containerd.sock
cpid=""
fail=0
ctr() { "$bin/ctr" --address "$sock" --namespace lmtest "$@"; }
ctr2() { "$bin/ctr" --address "$t/b.sock" --namespace lmtest "$@"; }   # the second host's
cleanup() {
	ctr tasks kill -s KILL lmrun-d >/dev/null 2>&1
	ctr tasks delete -f lmrun-d >/dev/null 2>&1
	for c in lmrun-d lmapp lmpod lmoom; do
		ctr tasks kill -s KILL $c >/dev/null 2>&1
		ctr tasks delete -f $c >/dev/null 2>&1
	done
	ctr tasks delete -f lmcrash >/dev/null 2>&1
	ctr containers delete lmrun-d lmrun lmapp lmpod lmopt lmbad lmcrash >/dev/null 2>&1
	[ -n "${epid:-}" ] && kill "$epid" 2>/dev/null
	for c in lmmig lmmig-m; do
		ctr2 tasks kill -s KILL $c >/dev/null 2>&1
		ctr2 tasks delete -f $c >/dev/null 2>&1
		ctr2 containers delete $c >/dev/null 2>&1
		ctr tasks kill -s KILL $c >/dev/null 2>&1
		ctr tasks delete -f $c >/dev/null 2>&1
		ctr containers delete $c >/dev/null 2>&1
	done
	for p in "$cpid" "${c2pid:-}"; do
		[ -n "$p" ] || continue
		kill "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	pkill -f -- "-namespace lmtest -id [^ ]+ -address $t/b.sock" 2>/dev/null
	umount -R "$t/b/root" 2>/dev/null
	# a shim containerd started and left (it should not): named by its socket
	pkill -f -- "-namespace lmtest -id [^ ]+ -address $sock" 2>/dev/null
	umount -R "$t/root" 2>/dev/null
	# LM_CTR_LOG=FILE keeps containerd's log (the shims' logs are in it)
	[ -n "${LM_CTR_LOG:-}" ] && cp "$t/containerd.log" "$LM_CTR_LOG" 2>/dev/null
	rm -rf "$t"
}
trap cleanup EXIT
check() {   # check WHAT COND...: one assertion (one command: no && in COND)
	local what=$1; shift
	if "$@"; then echo "ok - $what"; else echo "not ok - $what"; fail=1; fi
}
dump() {
	echo "# containerd's log (tail):"; tail -n 40 "$t/containerd.log" | sed 's/^/#   /'
}

# ---- the runtime: lmshim under the name containerd looks for ----------
mkdir -p "$t/bin"
ln -s "$(readlink -f "$lmshim")" "$t/bin/containerd-shim-lmshim-v1"
cat > "$t/config.toml" <<CFG
version = 2
root = "$t/root"
state = "$t/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
CFG
start_containerd() {
	PATH="$t/bin:$bin:$PATH" "$bin/containerd" --config "$t/config.toml" >>"$t/containerd.log" 2>&1 &
	cpid=$!
	for _ in $(seq 100); do
		ctr version >/dev/null 2>&1 && break
		sleep 0.1
	done
	ctr version >/dev/null 2>&1 || { dump; echo "containerd did not start"; exit 1; }
}
start_containerd
# every event containerd publishes in this namespace, to the end
ctr events >"$t/events.out" 2>&1 &
epid=$!

# ---- an OCI image: busybox-static and its applets, one layer -------------
img=$t/img
mkdir -p "$img/layer/bin" "$img/oci/blobs/sha256"
cp /bin/busybox "$img/layer/bin/busybox"
for a in $(/bin/busybox --list); do
	[ "$a" = busybox ] || ln -s busybox "$img/layer/bin/$a"
done
tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$img/layer" -cf "$img/layer.tar" .
blob() {   # blob FILE: copies FILE into the layout, prints "sha256:HEX SIZE"
	local h s
	h=$(sha256sum "$1" | cut -d' ' -f1)
	s=$(stat -c %s "$1")
	cp "$1" "$img/oci/blobs/sha256/$h"
	echo "sha256:$h $s"
}
read -r ld ls < <(blob "$img/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
	"$ld" > "$img/config.json"
read -r cd cs < <(blob "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
	"$cd" "$cs" "$ld" "$ls" > "$img/manifest.json"
read -r md ms < <(blob "$img/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"docker.io/library/lmbusybox:1"}}]}' \
	"$md" "$ms" > "$img/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$img/oci/oci-layout"
tar -C "$img/oci" -cf "$img/image.tar" oci-layout index.json blobs
ctr images import --all-platforms "$img/image.tar" >"$t/import.out" 2>&1 ||
	{ cat "$t/import.out"; dump; echo "image import failed"; exit 1; }
ref=$(ctr images ls -q | head -n 1)
check "the image is imported ($ref)" [ -n "$ref" ]

# ---- ctr run --rm: the output, and the exit status ----------------------
start=$(date +%s%N)
out=$(timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run --rm \
	--runtime io.containerd.lmshim.v1 "$ref" lmrun sh -c 'echo hi from $(hostname); exit 3' </dev/null 2>&1)
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "# ctr run --rm: exit $rc in $ms ms, said: $out"
check "ctr run prints the container's output" [ "$out" = "hi from lmrun" ]
check "ctr run returns the container's exit status" [ "$rc" -eq 3 ]
check "ctr run --rm leaves no container" [ -z "$(ctr containers ls -q)" ]

# ---- runtime options: --runtime-config-path names lmshim's JSON options ----
# (containerd writes them on the start's stdin as runtimeoptions.v1.Options)
echo '{"vm_memory_mb": 320, "debug": true}' > "$t/lmshim.json"
oout=$(timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run --rm --runtime io.containerd.lmshim.v1 \
	--runtime-config-path "$t/lmshim.json" "$ref" lmopt true </dev/null 2>&1)
orc=$?
echo "# ctr run with runtime options: exit $orc $oout"
check "ctr run with runtime options runs the task" [ "$orc" -eq 0 ]
opt_log=$(awk '/id=lmopt pid=/{on=1} on{print} /msg="shutdown complete" id=lmopt/{on=0}' "$t/containerd.log")
check "the options size the VM (vm_memory_mb 320)" \
	grep -q 'msg=launched vm=vm-lmopt .*mem_mib=320' <<<"$opt_log"
check "the options turn debug logging on" grep -q 'level=debug mod=' <<<"$opt_log"
echo '{"vm_memory": 320}' > "$t/bad.json"
bout=$(timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run --rm --runtime io.containerd.lmshim.v1 \
	--runtime-config-path "$t/bad.json" "$ref" lmbad true </dev/null 2>&1)
brc=$?
echo "# ctr run with a bad options file: exit $brc, said: $bout"
check "a bad options file fails ctr run, naming the key" \
	[ "$brc" -ne 0 -a -n "$(grep 'unknown key \\\?"vm_memory\\\?"' <<<"$bout" || true)" ]
check "and leaves no shim running" \
	[ -z "$(pgrep -f -- "-namespace lmtest -id lmbad -address $sock" || true)" ]
ctr containers delete lmbad >/dev/null 2>&1

# ---- a detached task: exec, ps, kill, delete -----------------------------
# (its shell is PID 1 of its PID namespace: no signal stops it unless it
# handles it, as under runc)
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d \
	--runtime io.containerd.lmshim.v1 "$ref" lmrun-d sh -c 'trap "exit 143" TERM; while :; do sleep 0.2; done' </dev/null >"$t/rund.out" 2>&1
check "ctr run -d starts the task" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = RUNNING ]
xout=$(timeout 60 "$bin/ctr" --address "$sock" --namespace lmtest tasks exec --exec-id x1 lmrun-d \
	sh -c 'echo exec in $(hostname); exit 5' </dev/null 2>&1)
xrc=$?
echo "# ctr task exec: exit $xrc, said: $xout"
check "ctr task exec prints the process's output" [ "$xout" = "exec in lmrun-d" ]
check "ctr task exec returns its exit status" [ "$xrc" -eq 5 ]
ps=$(ctr tasks ps lmrun-d 2>&1)
echo "# ctr task ps:"; echo "$ps" | sed 's/^/#   /'
check "ctr task ps lists the task's processes" [ "$(echo "$ps" | tail -n +2 | wc -l)" -ge 1 ]
ctr tasks pause lmrun-d
check "ctr task pause pauses it" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = PAUSED ]
ctr tasks resume lmrun-d
check "ctr task resume resumes it" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = RUNNING ]
met=$(ctr tasks metrics lmrun-d 2>&1)
echo "# ctr task metrics:"; echo "$met" | sed 's/^/#   /'
check "ctr task metrics prints the cgroup's figures" \
	grep -Eq '^(memory\.usage_in_bytes|pids\.current)[[:space:]]+[1-9]' <<<"$met"
# containerd restarts: it finds the shim and its running task again
kill "$epid" 2>/dev/null; wait "$epid" 2>/dev/null
kill "$cpid"; wait "$cpid" 2>/dev/null
start_containerd
ctr events >>"$t/events.out" 2>&1 &
epid=$!
check "after a containerd restart the task runs on" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = RUNNING ]
rout=$(timeout 60 "$bin/ctr" --address "$sock" --namespace lmtest tasks exec --exec-id x2 lmrun-d \
	hostname </dev/null 2>&1)
check "and takes an exec ($rout)" [ "$rout" = lmrun-d ]
ctr tasks kill -s WINCH lmrun-d
sleep 1
check "SIGWINCH does not stop it" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = RUNNING ]
ctr tasks kill -s TERM lmrun-d
for _ in $(seq 100); do
	[ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = STOPPED ] && break
	sleep 0.1
done
check "ctr task kill stops it" [ "$(ctr tasks ls | awk '$1=="lmrun-d"{print $3}')" = STOPPED ]
ctr tasks delete lmrun-d >/dev/null 2>&1
check "ctr task delete removes it" [ -z "$(ctr tasks ls -q)" ]
ctr containers delete lmrun-d >/dev/null 2>&1
sleep 1
# what containerd published of lmrun-d, in order (one line per event)
topics=$(grep -- lmrun-d "$t/events.out" | grep -o '/tasks/[a-z-]*' | uniq | tr '\n' ' ')
echo "# ctr events of lmrun-d: $topics"
for want in /tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/paused /tasks/resumed \
	/tasks/exit /tasks/delete; do
	check "ctr events shows $want" grep -q -- "$want" <<<"$topics"
done

# ---- a shim killed under its task: containerd cleans up --------------------
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d --runtime io.containerd.lmshim.v1 \
	"$ref" lmcrash sh -c 'while :; do sleep 0.2; done' </dev/null >"$t/crash.out" 2>&1
spid=$(pgrep -f -- "-namespace lmtest -id lmcrash -address $sock" | head -n 1)
csock=/run/containerd/s/$(printf '%s' "$sock/lmtest/lmcrash" | sha256sum | cut -d' ' -f1)
check "its socket is where containerd computes it" [ -S "$csock" ]
check "the crash task runs (shim $spid)" [ -n "$spid" -a "$(ctr tasks ls | awk '$1=="lmcrash"{print $3}')" = RUNNING ]
kill -9 "$spid"
for _ in $(seq 100); do
	[ "$(ctr tasks ls | awk '$1=="lmcrash"{print $3}')" != RUNNING ] && \
		[ -z "$(pgrep -f guest=vm-lmcrash || true)" ] && break
	sleep 0.1
done
check "containerd sees the task stop when its shim dies (state now: '$(ctr tasks ls | awk '$1=="lmcrash"{print $3}')')" \
	[ "$(ctr tasks ls | awk '$1=="lmcrash"{print $3}')" != RUNNING ]
check "and its VM dies with the shim" [ -z "$(pgrep -f guest=vm-lmcrash || true)" ]
ctr tasks delete lmcrash >/dev/null 2>&1
ctr containers delete lmcrash >/dev/null 2>&1
check "ctr containers delete cleans it up" [ -z "$(ctr containers ls -q | grep -x lmcrash || true)" ]
check "containerd ran lmshim delete for it: its stale socket is gone" \
	[ -n "$(grep -l 'cleaning up dead shim' "$t/containerd.log" || true)" -a ! -e "$csock" ]

# ---- a container out of its memory: /tasks/oom -----------------------------
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d --runtime io.containerd.lmshim.v1 \
	--memory-limit 25165824 "$ref" lmoom \
	sh -c 'sleep 1; dd if=/dev/zero of=/dev/shm/fill bs=1M count=64; sleep 3600' </dev/null >"$t/oom.out" 2>&1
for _ in $(seq 150); do
	grep -q -- '/tasks/oom.*lmoom' "$t/events.out" && break
	sleep 0.2
done
check "64 MiB into a 24 MiB container: ctr events shows its /tasks/oom" grep -q -- '/tasks/oom.*lmoom' "$t/events.out"
ctr tasks kill -s KILL lmoom >/dev/null 2>&1
for _ in $(seq 100); do [ "$(ctr tasks ls | awk '$1=="lmoom"{print $3}')" = STOPPED ] && break; sleep 0.1; done
ctr tasks delete lmoom >/dev/null 2>&1
ctr containers delete lmoom >/dev/null 2>&1

# ---- a pod: its sandbox and an app container in one shim, one VM ------------
state() { ctr tasks ls | awk -v id="$1" '$1==id{print $3}'; }
pod=(--annotation io.kubernetes.cri.sandbox-id=lmpod)
loop='trap "exit 0" TERM; while :; do sleep 0.2; done'
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d --runtime io.containerd.lmshim.v1 \
	--annotation io.kubernetes.cri.container-type=sandbox "${pod[@]}" "$ref" lmpod sh -c "$loop" \
	</dev/null >"$t/pod.out" 2>&1
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d --runtime io.containerd.lmshim.v1 \
	--annotation io.kubernetes.cri.container-type=container "${pod[@]}" "$ref" lmapp sh -c "$loop" \
	</dev/null >>"$t/pod.out" 2>&1
check "the pod's sandbox and app container run" [ "$(state lmpod)/$(state lmapp)" = RUNNING/RUNNING ]
shims=$(pgrep -c -f -- "-namespace lmtest -id [^ ]+ -address $sock" || true)
vms=$(pgrep -c -f "guest=vm-lm(pod|app)" || true)
echo "# the pod: $shims shim(s), $vms VM(s)"
check "one shim serves the pod" [ "$shims" = 1 ]
check "one VM runs the pod" [ "$vms" = 1 -a -n "$(pgrep -f guest=vm-lmpod || true)" ]
aout=$(timeout 60 "$bin/ctr" --address "$sock" --namespace lmtest tasks exec --exec-id a1 lmapp \
	hostname </dev/null 2>&1)
check "exec in the app container runs there ($aout)" [ "$aout" = lmapp ]
ctr tasks kill lmapp
for _ in $(seq 100); do [ "$(state lmapp)" = STOPPED ] && break; sleep 0.1; done
ctr tasks delete lmapp >/dev/null 2>&1
ctr containers delete lmapp >/dev/null 2>&1
sleep 0.5
check "the pod's shim stays while its sandbox runs" [ "$(state lmpod)" = RUNNING ]
ctr tasks kill lmpod
for _ in $(seq 100); do [ "$(state lmpod)" = STOPPED ] && break; sleep 0.1; done
ctr tasks delete lmpod >/dev/null 2>&1
ctr containers delete lmpod >/dev/null 2>&1
for _ in $(seq 50); do
	[ -z "$(pgrep -f -- "-namespace lmtest -id [^ ]+ -address $sock" || true)" ] && break
	sleep 0.1
done
# ---- a migration between two containerds ------------------------------------
# a second "host": its own containerd (root, state, sockets), the same image
sed -e "s|$t/root|$t/b/root|; s|$t/state|$t/b/state|; s|$sock|$t/b.sock|g" "$t/config.toml" >"$t/b.toml"
PATH="$t/bin:$bin:$PATH" "$bin/containerd" --config "$t/b.toml" >"$t/b.log" 2>&1 &
c2pid=$!
for _ in $(seq 100); do ctr2 version >/dev/null 2>&1 && break; sleep 0.1; done
ctr2 images import --all-platforms "$img/image.tar" >/dev/null 2>&1
timeout 120 "$bin/ctr" --address "$sock" --namespace lmtest run -d --runtime io.containerd.lmshim.v1 \
	"$ref" lmmig sh -c 'i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done' </dev/null >"$t/mig.out" 2>&1
msrc=/run/containerd/s/$(printf '%s' "$sock/lmtest/lmmig" | sha256sum | cut -d' ' -f1)
# the destination's shim, started as containerd would start the pod's
mkdir -p "$t/dshim"
mdst=$(cd "$t/dshim" && TTRPC_ADDRESS="$t/b.sock.ttrpc" "$lmshim" -namespace lmtest -address "$t/b.sock" \
	-id lmmig-m start </dev/null)
check "the source task runs ($msrc), the destination shim waits ($mdst)" \
	[ "$(ctr tasks ls | awk '$1=="lmmig"{print $3}')" = RUNNING -a -n "$mdst" ]
mout=$(timeout 300 "$lmctl" migrate --from "$msrc" --to "$mdst" --workdir "$t/mwork" --session ctr-mig \
	--quiet --no-verify --src-containerd "$sock" --dst-containerd "$t/b.sock" \
	--containerd-namespace lmtest --ctr "$bin/ctr" 2>&1)
mrc=$?
echo "# lmctl migrate with both containerds: exit $mrc"; echo "$mout" | sed 's/^/#   /'
check "lmctl migrate moves it and tells both containerds" [ "$mrc" -eq 0 ]
check "the destination's containerd lists it RUNNING under its new ID" \
	[ "$(ctr2 tasks ls | awk '$1=="lmmig-m"{print $3}')" = RUNNING ]
check "the source's containerd lists neither task nor container" \
	[ -z "$(ctr tasks ls -q | grep -x lmmig || true)$(ctr containers ls -q | grep -x lmmig || true)" ]
n0=$(wc -l <"$t/mwork/bundles/lmmig-m/stdout.log" 2>/dev/null || echo 0)
sleep 1
n1=$(wc -l <"$t/mwork/bundles/lmmig-m/stdout.log" 2>/dev/null || echo 0)
check "it counts on there ($n0 -> $n1 lines)" [ "$n1" -gt "$n0" ]
xo=$(timeout 60 "$bin/ctr" --address "$t/b.sock" --namespace lmtest tasks exec --exec-id m1 lmmig-m \
	sh -c 'echo exec after the move' </dev/null 2>&1)
check "the destination's containerd execs in it ($xo)" [ "$xo" = "exec after the move" ]
ctr2 tasks kill -s KILL lmmig-m
for _ in $(seq 100); do [ "$(ctr2 tasks ls | awk '$1=="lmmig-m"{print $3}')" = STOPPED ] && break; sleep 0.1; done
check "and kills it (its exit reaches that containerd)" [ "$(ctr2 tasks ls | awk '$1=="lmmig-m"{print $3}')" = STOPPED ]
ctr2 tasks delete lmmig-m >/dev/null 2>&1
ctr2 containers delete lmmig-m >/dev/null 2>&1
for _ in $(seq 50); do
	[ -z "$(pgrep -f -- "-id lmmig(-m)? -address" || true)" ] && break
	sleep 0.1
done
check "no shim of the migrated task is left on either host" [ -z "$(pgrep -f -- "-id lmmig(-m)? -address" || true)" ]

check "no shim and no QEMU of these tasks is left running" \
	[ -z "$(pgrep -f -- "guest=vm-lm|-namespace lmtest -id [^ ]+ -address $sock" || true)" ]
# every shim containerd stopped by Shutdown logged its last line before
# containerd closed its log (which it does when Shutdown answers)
served=$(grep 'mod=lmshim msg=serving' "$t/containerd.log" | sed -n 's/.* id=\([^ ]*\) .*/\1/p' |
	grep -vx lmcrash | sort)   # (not the one killed -9)
ended=$(grep 'msg="shutdown complete"' "$t/containerd.log" | sed -n 's/.* id=\([^ ]*\) .*/\1/p' | sort)
echo "# shims served: $(echo $served); ended in the log: $(echo $ended)"
check "each shim's log reaches containerd to its last line" [ -n "$served" -a "$served" = "$ended" ]
check "no sanitizer report in the shims' logs" \
	[ -z "$(grep -E "Sanitizer|runtime error:" "$t/containerd.log" || true)" ]
[ "$fail" -eq 0 ] || dump
exit $fail
