#!/usr/bin/env bash
# The one script the H100/H200 runs: build, GPU tests, sanitizers, benchmark. Logs go to $OUT.
# usage: scripts/gpu_check.sh [build] [compat] [smoke] [tests] [cputests] [sanitize] [bench] [e2e] [example] [ncu]
#        [sass] ...
#   (default: build smoke tests); `compat` needs .ffi-oldest carried (scripts/fetch_oldest_ffi_headers.sh)
#   PYTEST_ARGS="-k masked" narrows the test run; BENCH_ARGS is passed to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dgpt_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export DG_JIT_CACHE_DIR=${DG_JIT_CACHE_DIR:-/tmp/dgpt_cache}
[ $# -gt 0 ] || set -- build smoke tests
status=0

step() { echo; echo "=== $1 ($(date +%T))"; }

for what in "$@"; do
  case "$what" in
    build)
      step build
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee "$OUT/gpu.txt"
      python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
      python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
      echo "build ok" ;;
    compat)
      # An extension built against the oldest supported jaxlib's FFI headers (.ffi-oldest, from
      # scripts/fetch_oldest_ffi_headers.sh, carried) must load and run in this machine's jaxlib.
      step "compat: build against jaxlib $(cat .ffi-oldest/JAXLIB_VERSION 2>/dev/null) FFI headers"
      python3 -m pip install --no-build-isolation --no-deps -e . \
        --config-settings=cmake.define.XLA_FFI_INCLUDE_DIR="$PWD/.ffi-oldest" \
        --config-settings=build-dir=build/compat >"$OUT/build_compat.log" 2>&1 \
        || { tail -20 "$OUT/build_compat.log"; status=1; continue; }
      python3 -c "import jax, jax_dgpt._C as C; print('extension FFI API', C.ffi_api_version(), 'jaxlib', jax.__version__)"
      timeout 300 python3 scripts/smoke.py 2>&1 | tee "$OUT/smoke_compat.log" || status=1
      python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || status=1 ;;
    smoke)
      step smoke
      timeout 300 python3 scripts/smoke.py 2>&1 | tee "$OUT/smoke.log" || status=1 ;;
    tests)
      step "gpu tests"
      # Several pytest workers (PYTEST_ARGS="-n 4", pytest-xdist) share the GPU: no preallocation.
      XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${TEST_TIMEOUT:-480} \
        python3 -m pytest tests -m gpu -q -rs --durations=12 ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    cputests)
      step "cpu tests (on the GPU machine: lowering, heuristics, compile checks)"
      python3 -m pytest tests -m "not gpu" -q ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/cpu_tests.log" | tail -15 ;;
    sanitize)
      step sanitize
      for tool in memcheck racecheck synccheck; do
        compute-sanitizer --tool "$tool" --print-limit 20 python3 scripts/sanitize_case.py >"$OUT/sanitize_$tool.log" 2>&1
        echo "$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" | tail -1)"
      done ;;
    bench)
      step benchmark
      python3 benchmarks/bench.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -80
      python3 benchmarks/chart.py "$OUT/results.json" "$OUT/chart.png" || status=1 ;;
    e2e)
      step "end to end: host overhead, cold compile, warm-cache first call"
      python3 benchmarks/end_to_end.py --out "$OUT" 2>&1 | tee "$OUT/end_to_end.log" | tail -20 ;;
    ncu)
      # Nsight Compute on the GEMM kernel only (clocks left alone): NCU_SHAPES="4096x7168x576 64x2112x7168",
      # NCU_ARGS="--multicast" (profile_case.py's options). One report per run, plus a text summary with the
      # tensor-pipe activity. (Calling cuProfilerStart through ctypes under ncu crashed the process on the H200.)
      step "ncu: ${NCU_SHAPES:=4096x7168x576}"
      timeout 400 ncu --clock-control none --kernel-name "${NCU_KERNEL:-dgpt_kernel}" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
        --metrics sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed,sm__cycles_elapsed.avg.per_second \
        -f -o "$OUT/ncu" python3 scripts/profile_case.py $NCU_SHAPES ${NCU_ARGS:-} >"$OUT/ncu_run.log" 2>&1 || status=1
      ncu --import "$OUT/ncu.ncu-rep" --page details >"$OUT/ncu_details.txt" 2>&1 || status=1
      grep -E "^  [a-zA-Z_]|Duration|Throughput|Stall|Issued|Eligible|Registers|Waves|pipe_tensor|cycles_elapsed" \
        "$OUT/ncu_details.txt" | head -120 ;;
    sass)
      # Instruction counts (fences, barriers, wgmma) of a few configurations; listings in $OUT/sass_*.txt.
      step "sass"
      python3 scripts/sass_stats.py "$OUT" 2>&1 | tee "$OUT/sass_stats.md" ;;
    example)
      step "examples/moe_layer.py"
      timeout 300 python3 examples/moe_layer.py 2>&1 | tee "$OUT/moe_layer.log" | tail -25
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done
exit $status
