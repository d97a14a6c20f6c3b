/* A stand-in libcuda.so.1 for CPU tests of the host launch path (tests/test_launcher_fake_driver.py).
 *
 * It answers the driver calls jax_dgpt makes (resolved through cuGetProcAddress), launches nothing,
 * and records what it was asked: tensor-map encodings and address replacements (the map stores the global address, box and
 * swizzle, so a test can read them back from the kernel parameter) and the last launch's grid,
 * cluster shape, shared memory and parameter bytes. Functions named fake_* steer and read it. */
#include <cuda.h>
#include <string.h>

static int g_encodes, g_launches, g_occupancy_queries, g_fail_encodes, g_replaces, g_fail_replaces;
static int g_max_clusters = 66; /* < 0: the occupancy query fails */
static unsigned g_grid, g_cluster, g_smem, g_block;
static unsigned char g_params[4096];

/* ---- steering and readback (ctypes) ---- */
void fake_reset(void) {
  g_encodes = g_launches = g_occupancy_queries = g_fail_encodes = g_replaces = g_fail_replaces = 0;
  g_max_clusters = 66;
  g_grid = g_cluster = g_smem = g_block = 0;
  memset(g_params, 0, sizeof g_params);
}
void fake_set_max_clusters(int n) { g_max_clusters = n; }
void fake_fail_encodes(int n) { g_fail_encodes = n; }
int fake_encodes(void) { return g_encodes; }
void fake_fail_replaces(int n) { g_fail_replaces = n; }
int fake_replaces(void) { return g_replaces; }
int fake_launches(void) { return g_launches; }
int fake_occupancy_queries(void) { return g_occupancy_queries; }
void fake_last_launch(unsigned *out /* grid, cluster, smem, block */) {
  out[0] = g_grid;
  out[1] = g_cluster;
  out[2] = g_smem;
  out[3] = g_block;
}
void fake_last_params(unsigned char *out, size_t n) { memcpy(out, g_params, n < sizeof g_params ? n : sizeof g_params); }

/* ---- the driver API subset ---- */
static CUresult get_error_name(CUresult e, const char **s) { *s = e ? "CUDA_ERROR_FAKE" : "CUDA_SUCCESS"; return CUDA_SUCCESS; }
static CUresult get_error_string(CUresult e, const char **s) { *s = e ? "stand-in driver error" : "no error"; return CUDA_SUCCESS; }
static CUresult init(unsigned flags) { (void)flags; return CUDA_SUCCESS; }
static CUresult device_get(CUdevice *d, int ordinal) { *d = ordinal; return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }
static CUresult device_get_attribute(int *v, CUdevice_attribute a, CUdevice d) {
  (void)d;
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; return CUDA_SUCCESS;
    default: *v = 0; return CUDA_SUCCESS;
  }
}
static int g_library, g_kernel;
static CUresult library_load_data(CUlibrary *lib, const void *code, CUjit_option *jo, void **jv, unsigned nj,
                                  CUlibraryOption *lo, void **lv, unsigned nl) {
  (void)code; (void)jo; (void)jv; (void)nj; (void)lo; (void)lv; (void)nl;
  *lib = (CUlibrary)&g_library;
  return CUDA_SUCCESS;
}
static CUresult library_get_kernel(CUkernel *k, CUlibrary lib, const char *name) {
  (void)lib;
  if (strcmp(name, "dgpt_kernel") != 0) return CUDA_ERROR_NOT_FOUND;
  *k = (CUkernel)&g_kernel;
  return CUDA_SUCCESS;
}
static CUresult kernel_set_attribute(CUfunction_attribute a, int v, CUkernel k, CUdevice d) {
  (void)a; (void)v; (void)k; (void)d;
  return CUDA_SUCCESS;
}
static CUresult occupancy_max_active_clusters(int *n, CUfunction f, const CUlaunchConfig *c) {
  (void)f; (void)c;
  ++g_occupancy_queries;
  if (g_max_clusters < 0) return CUDA_ERROR_INVALID_VALUE;
  *n = g_max_clusters;
  return CUDA_SUCCESS;
}
static CUresult launch_kernel_ex(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
  (void)f; (void)extra;
  ++g_launches;
  g_grid = c->gridDimX;
  g_block = c->blockDimX;
  g_smem = c->sharedMemBytes;
  g_cluster = 1;
  for (unsigned i = 0; i < c->numAttrs; ++i) {
    if (c->attrs[i].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) g_cluster = c->attrs[i].value.clusterDim.x;
  }
  memcpy(g_params, params[0], sizeof g_params < 640 ? sizeof g_params : 640);  /* sizeof(GemmParams) */
  return CUDA_SUCCESS;
}
/* The map records (address, inner dim, rows, box inner, box rows, swizzle, L2 promotion) as 64-bit words. */
static CUresult tensor_map_encode_tiled(CUtensorMap *map, CUtensorMapDataType dtype, cuuint32_t rank, void *address,
                                        const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                        const cuuint32_t *element_strides, CUtensorMapInterleave interleave,
                                        CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2,
                                        CUtensorMapFloatOOBfill oob) {
  (void)dtype; (void)rank; (void)strides; (void)element_strides; (void)interleave; (void)oob;
  ++g_encodes;
  if (g_fail_encodes > 0) {
    --g_fail_encodes;
    return CUDA_ERROR_INVALID_VALUE;
  }
  cuuint64_t words[16] = {(cuuint64_t)address, dims[0], dims[1], box[0], box[1], (cuuint64_t)swizzle, (cuuint64_t)l2};
  memcpy(map, words, sizeof words);
  return CUDA_SUCCESS;
}

/* Replacing the address rewrites the map's first word, where the stand-in encoding keeps it. */
static CUresult tensor_map_replace_address(CUtensorMap *map, void *address) {
  ++g_replaces;
  if (g_fail_replaces > 0) {
    --g_fail_replaces;
    return CUDA_ERROR_INVALID_VALUE;
  }
  cuuint64_t word = (cuuint64_t)address;
  memcpy(map, &word, sizeof word);
  return CUDA_SUCCESS;
}

struct entry {
  const char *name;
  void *fn;
};
static const struct entry g_entries[] = {
    {"cuGetErrorName", (void *)get_error_name},
    {"cuGetErrorString", (void *)get_error_string},
    {"cuInit", (void *)init},
    {"cuDeviceGet", (void *)device_get},
    {"cuDeviceGetAttribute", (void *)device_get_attribute},
    {"cuLibraryLoadData", (void *)library_load_data},
    {"cuLibraryGetKernel", (void *)library_get_kernel},
    {"cuKernelSetAttribute", (void *)kernel_set_attribute},
    {"cuLaunchKernelEx", (void *)launch_kernel_ex},
    {"cuOccupancyMaxActiveClusters", (void *)occupancy_max_active_clusters},
    {"cuTensorMapEncodeTiled", (void *)tensor_map_encode_tiled},
    {"cuTensorMapReplaceAddress", (void *)tensor_map_replace_address},
};

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
  (void)version; (void)flags;
  for (size_t i = 0; i < sizeof g_entries / sizeof g_entries[0]; ++i) {
    if (strcmp(symbol, g_entries[i].name) == 0) {
      *pfn = g_entries[i].fn;
      if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  *pfn = NULL;
  if (status) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_ERROR_NOT_FOUND;
}
