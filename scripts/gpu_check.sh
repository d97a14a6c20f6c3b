#!/usr/bin/env bash
# The one script the H100/H200 runs: build, GPU tests, sanitizers, benchmark, profiles. Everything a run
# produces goes into one run directory, $OUT/<date>_<gpu>_<short-sha>/ (benchmarks/rundir.py describes it):
#   manifest.json machine.json results.json end_to_end.json chart.png logs.tar.gz [ncu.ncu-rep] [xla_autotune_cache.tgz]
# plus the log of a step that was stopped mid-way. logs.tar.gz (every step's log, fixed names) is rewritten
# after each step, so a call stopped by its time limit keeps what finished. File it into the repository with
#   python -m benchmarks.rundir file <returned>/<run>   &&   python -m benchmarks.report
#
# usage: scripts/gpu_check.sh [build] [compat] [smoke] [tests] [cputests] [sanitize] [bench] [breakdown] [e2e] [ncu] [sass]
#        [example] [probe] ...        (default: build smoke tests)
#   compat needs .ffi-oldest carried (scripts/fetch_oldest_ffi_headers.sh)
#   PYTEST_ARGS="-k masked" and TEST_PATHS (default tests) narrow the test run; TEST_TIMEOUT (s) limits it;
#   SANITIZE_CASES (scripts/sanitize_case.py's case names) narrows the sanitizers; EXAMPLES and TRAIN_ARGS the
#   example step; BENCH_ARGS goes to the benchmark
#   (e.g. "--quick") and BENCH_TIMEOUT (s) limits it; NCU_SHAPES/NCU_ARGS/NCU_KERNEL choose the ncu case; DGPT_GIT_SHA (and DGPT_GIT_DIRTY=0/1)
#   name the commit when the copy on the GPU machine has no .git.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dgpt_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export DG_JIT_CACHE_DIR=${DG_JIT_CACHE_DIR:-/tmp/dgpt_cache}
[ $# -gt 0 ] || set -- build smoke tests
for what in "$@"; do
  case "$what" in
    build|compat|smoke|tests|cputests|sanitize|bench|breakdown|e2e|ncu|sass|example|probe) ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done

# Wheels the GPU image lacks (tokamax and its dependencies for the ragged table), carried as .whl
# (../shared/tools/device-wheels.sh): installed beside the image's packages, for every step.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/dgpt_wheels .whl/*.whl \
    && export PYTHONPATH=/tmp/dgpt_wheels${PYTHONPATH:+:$PYTHONPATH} && echo "carried wheels: $(ls .whl | tr '\n' ' ')"
fi

RUN=$(python3 -m benchmarks.rundir init "$OUT" --command "scripts/gpu_check.sh $*") || exit 1
LOGS=/tmp/dgpt_logs/$(basename "$RUN")   # staging for finished logs, packed into $RUN/logs.tar.gz
# NOTES: a fresh staging folder per call: a second call with another OUT (same run name) must not pack the
# first call's logs again.
rm -rf "$LOGS" && mkdir -p "$LOGS"
echo "run directory: $RUN"
status=0

# begin NAME [TITLE]: start timing a step.
begin() {
  STEP=$1; STEP_T0=$(date +%s.%N); echo; echo "=== ${2:-$1} ($(date +%T))"
  python3 -m benchmarks.rundir begin "$RUN" "$STEP"
}
# finish RC COMMAND LOG...: record the step, move its logs into the staging folder, repack.
finish() {
  local rc=$1 command=$2; shift 2
  local seconds logs=() log
  seconds=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$STEP_T0" "$(date +%s.%N)")
  for log in "$@"; do logs+=(--log "$log"); [ -e "$RUN/$log" ] && mv "$RUN/$log" "$LOGS/"; done
  python3 -m benchmarks.rundir step "$RUN" "$STEP" "$rc" "$seconds" --command "$command" "${logs[@]}"
  tar -czf "$RUN/logs.tar.gz" -C "$LOGS" .
  [ "$rc" = 0 ] || status=1
}

for what in "$@"; do
  case "$what" in
    build)
      begin build
      cmd="python3 -m pip install --no-build-isolation --no-deps -e ."
      $cmd >"$RUN/build.log" 2>&1; rc=$?
      [ $rc = 0 ] && echo "build ok" || tail -40 "$RUN/build.log"
      finish $rc "$cmd" build.log
      [ $rc = 0 ] || exit 1 ;;
    compat)
      # An extension built against the oldest supported jaxlib's FFI headers (.ffi-oldest, from
      # scripts/fetch_oldest_ffi_headers.sh, carried) must load and run in this machine's jaxlib.
      begin compat "compat: build against jaxlib $(cat .ffi-oldest/JAXLIB_VERSION 2>/dev/null) FFI headers"
      python3 -m pip install --no-build-isolation --no-deps -e . \
        --config-settings=cmake.define.XLA_FFI_INCLUDE_DIR="$PWD/.ffi-oldest" \
        --config-settings=build-dir=build/compat >"$RUN/build_compat.log" 2>&1
      rc=$?
      if [ $rc = 0 ]; then
        { python3 -c "import jax, jax_dgpt._C as C; print('extension FFI API', C.ffi_api_version(), 'jaxlib', jax.__version__)"
          timeout 300 python3 scripts/smoke.py; } 2>&1 | tee "$RUN/smoke_compat.log"
        rc=${PIPESTATUS[0]}
      else
        tail -20 "$RUN/build_compat.log"
      fi
      python3 -m pip install --no-build-isolation --no-deps -e . >>"$RUN/build_compat.log" 2>&1 || rc=1
      finish $rc "pip install (XLA_FFI_INCLUDE_DIR=.ffi-oldest) && scripts/smoke.py; pip install -e ." \
        build_compat.log smoke_compat.log ;;
    smoke)
      begin smoke
      timeout 300 python3 scripts/smoke.py 2>&1 | tee "$RUN/smoke.log"
      finish "${PIPESTATUS[0]}" "python3 scripts/smoke.py" smoke.log ;;
    tests)
      begin tests "gpu tests"
      # Several pytest workers (PYTEST_ARGS="-n 4", pytest-xdist) share the GPU: no preallocation.
      cmd="python3 -m pytest ${TEST_PATHS:-tests} -m gpu -q -rs --durations=12 ${PYTEST_ARGS:-}"
      # DGPT_REPORT_FAILURES_AT_ONCE (tests/conftest.py): a failure's traceback is logged when it happens,
      # so a run stopped by TEST_TIMEOUT still says which test failed and why.
      XLA_PYTHON_CLIENT_PREALLOCATE=false DGPT_REPORT_FAILURES_AT_ONCE=1 timeout "${TEST_TIMEOUT:-480}" $cmd 2>&1 | tee "$RUN/gpu_tests.log" | tail -40
      finish "${PIPESTATUS[0]}" "$cmd" gpu_tests.log ;;
    cputests)
      begin cputests "cpu tests (on the GPU machine: lowering, heuristics, compile checks)"
      cmd="python3 -m pytest tests -m 'not gpu' -q ${PYTEST_ARGS:-}"
      python3 -m pytest tests -m "not gpu" -q ${PYTEST_ARGS:-} 2>&1 | tee "$RUN/cpu_tests.log" | tail -15
      finish "${PIPESTATUS[0]}" "$cmd" cpu_tests.log ;;
    sanitize)
      begin sanitize
      rc=0
      logs=()
      # memcheck and synccheck over every case in one process; racecheck one case per process, so that
      # each report names its case (every configuration's entry point is called dgpt_kernel).
      # SANITIZE_CASES="training_ops ragged" narrows all three tools to those cases.
      cases=${SANITIZE_CASES:-$(python3 -c "import sys; sys.path.insert(0, 'scripts'); import sanitize_case as s; print(*s.CASES)")}
      if [ -n "${SANITIZE_CASES:-}" ]; then runs=""; for case in $cases; do runs="$runs memcheck:$case synccheck:$case"; done
      else runs="memcheck:all synccheck:all"; fi
      for case in $cases; do runs="$runs racecheck:$case"; done
      for run in $runs; do
        tool=${run%%:*} case=${run#*:}
        log="sanitize_${tool}_${case}.log"
        args=(); [ "$case" = all ] || args=("$case")
        # NOTES: --error-exitcode: without it racecheck exits 0 with hazards reported (seen 2026-12-01).
        # SANITIZE_TIMEOUT (s, per tool and case) stops a hung case (a deadlocked cluster) without losing the rest.
        timeout "${SANITIZE_TIMEOUT:-900}" compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
          python3 scripts/sanitize_case.py "${args[@]}" >"$RUN/$log" 2>&1
        tool_rc=$?
        echo "$tool $case: rc=$tool_rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$RUN/$log" | tail -1)"
        [ $tool_rc = 0 ] || rc=1
        logs+=("$log")
      done
      finish $rc "compute-sanitizer --tool {memcheck,synccheck} sanitize_case.py; --tool racecheck sanitize_case.py CASE" \
        "${logs[@]}" ;;
    bench)
      begin bench benchmark
      # NOTES: XLA autotunes every baseline dot at its first call (up to 50 s for one fp8 HIGHEST dot, seen
      # 2026-12-01), most of a run's time. Its choices persist in a per-fusion cache kept in the repository
      # (benchmarks/xla_autotune_cache.tgz): entries found are reused (the same choice XLA made on an H200
      # before), missing ones are autotuned and added; the updated cache comes back as
      # $RUN/xla_autotune_cache.tgz, to be copied over the repository's.
      at=/tmp/dgpt_xla_autotune; rm -rf "$at"; mkdir -p "$at/xla_at"
      [ -f benchmarks/xla_autotune_cache.tgz ] && tar -xzf benchmarks/xla_autotune_cache.tgz -C "$at"
      before=$(find "$at/xla_at" -name '*.pb' | wc -l)
      cmd="python3 -m benchmarks.bench --out $RUN ${BENCH_ARGS:-}"
      # BENCH_TIMEOUT (s) stops the benchmark, not the step: the rows so far and the grown cache still come back.
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_per_fusion_autotune_cache_dir=$at/xla_at" \
        timeout "${BENCH_TIMEOUT:-86400}" $cmd 2>&1 | tee "$RUN/bench.log" | tail -80
      rc=${PIPESTATUS[0]}
      echo "XLA autotune cache: $before entries loaded, $(find "$at/xla_at" -name '*.pb' | wc -l) after" \
        | tee -a "$RUN/bench.log"
      tar -czf "$RUN/xla_autotune_cache.tgz" -C "$at" xla_at
      python3 -m benchmarks.chart "$RUN/results.json" "$RUN/chart.png" || rc=1
      finish $rc "XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=<cache> $cmd" bench.log ;;
    breakdown)
      # Kernel-by-kernel device time of training steps: BREAKDOWN_CASES (benchmarks/breakdown.py's cases).
      begin breakdown "breakdown: ${BREAKDOWN_CASES:=matmul:1024x7168x7168 moe:8192x1024x1024x16x2}"
      cmd="python3 -m benchmarks.breakdown $BREAKDOWN_CASES ${BREAKDOWN_ARGS:-}"
      # Command buffers off: each custom call's kernels are then attributed to it (benchmarks/breakdown.py).
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" $cmd 2>&1 | tee "$RUN/breakdown.log"
      finish "${PIPESTATUS[0]}" "$cmd" breakdown.log ;;
    e2e)
      begin e2e "end to end: host overhead, cold compile, warm-cache first call"
      cmd="python3 -m benchmarks.end_to_end --out $RUN"
      $cmd 2>&1 | tee "$RUN/end_to_end.log" | tail -20
      finish "${PIPESTATUS[0]}" "$cmd" end_to_end.log ;;
    ncu)
      # Nsight Compute on the GEMM kernel only (clocks left alone): NCU_SHAPES="4096x7168x576 64x2112x7168",
      # NCU_ARGS (profile_case.py's options). One report per run, plus a text summary with the tensor-pipe
      # activity. (Calling cuProfilerStart through ctypes under ncu crashed the process on the H200.)
      begin ncu "ncu: ${NCU_SHAPES:=4096x7168x576}"
      cmd="ncu --clock-control none --kernel-name ${NCU_KERNEL:-dgpt_kernel} ... python3 scripts/profile_case.py $NCU_SHAPES ${NCU_ARGS:-}"
      timeout 400 ncu --clock-control none --kernel-name "${NCU_KERNEL:-dgpt_kernel}" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
        --metrics sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed,sm__cycles_elapsed.avg.per_second \
        -f -o "$RUN/ncu" python3 scripts/profile_case.py $NCU_SHAPES ${NCU_ARGS:-} >"$RUN/ncu.log" 2>&1
      rc=$?
      ncu --import "$RUN/ncu.ncu-rep" --page details >"$RUN/ncu_details.txt" 2>&1 || rc=1
      grep -E "^  [a-zA-Z_]|Duration|Throughput|Stall|Issued|Eligible|Registers|Waves|pipe_tensor|cycles_elapsed" \
        "$RUN/ncu_details.txt" | head -120
      finish $rc "$cmd" ncu.log ncu_details.txt ;;
    sass)
      # Instruction counts (fences, barriers, wgmma) of a few configurations (SASS_CONFIGS: their labels in
      # scripts/sass_stats.py); listings go with the logs.
      begin sass
      python3 scripts/sass_stats.py "$LOGS" ${SASS_CONFIGS:-} 2>&1 | tee "$RUN/sass_stats.md"
      finish "${PIPESTATUS[0]}" "python3 scripts/sass_stats.py" sass_stats.md ;;
    probe)
      # Standalone CUDA probes of one hardware question each (benchmarks/probes/*.cu, named in their header;
      # PROBES narrows them): built with the machine's nvcc, one log each.
      begin probe "probes: ${PROBES:=$(cd benchmarks/probes && ls *.cu | sed 's/\.cu$//' | tr '\n' ' ')}"
      rc=0 logs=()
      for probe in $PROBES; do
        { nvcc -std=c++20 -O3 -arch=sm_90a -I kernels "benchmarks/probes/$probe.cu" -L/usr/local/cuda/lib64/stubs -lcuda -o "/tmp/probe_$probe" \
            && "/tmp/probe_$probe"; } >"$RUN/probe_$probe.log" 2>&1 || rc=1
        cat "$RUN/probe_$probe.log"; logs+=("probe_$probe.log")
      done
      finish $rc "probes $PROBES" "${logs[@]}" ;;
    example)
      # EXAMPLES (default "demo moe_layer train_moe") narrows it; TRAIN_ARGS go to train_moe.py (e.g.
      # "--steps 100"), whose curves (train_moe.png, train_moe.json) land in the run directory.
      begin example "examples: ${EXAMPLES:=demo moe_layer train_moe}"
      rc=0 logs=()
      for example in $EXAMPLES; do
        args=(); [ "$example" = train_moe ] && args=(--out "$RUN/train_moe" ${TRAIN_ARGS:-})
        timeout "${EXAMPLE_TIMEOUT:-420}" python3 "examples/$example.py" "${args[@]}" 2>&1 | tee "$RUN/$example.log" | tail -25
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
        logs+=("$example.log")
      done
      finish $rc "python3 examples/{$(echo $EXAMPLES | tr ' ' ,)}.py" "${logs[@]}" ;;
  esac
done
echo; echo "run directory: $RUN ($(ls "$RUN" | tr '\n' ' '))"
exit $status
