/* A stand-in for libcuda.so.1 with the 18 entry points the fusedaot runtime resolves, for
 * testing the runtime and the generated dispatch on a machine without a GPU.  It records
 * every launch (function, grid, block, shared memory, stream, and the first bytes of each
 * kernel parameter), module load (a copy of each image: the runtime may reuse its buffer) and
 * shared-memory opt-in, and can be told to fail.  Every
 * function reports FAKE_STATIC_SMEM bytes of static shared memory.  Built by tests/test_runtime.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
#define MAX_PARAMS 64  // tests/conftest.py's Launch mirrors this struct

struct fake_launch {
  char symbol[128];
  unsigned grid[3], block[3], shared;
  uintptr_t stream;
  int nparams;
  unsigned char params[MAX_PARAMS][8];
};

static struct fake_launch last;
static int launches, loads, pushes, pops, fail_load, nwidths, tensor_maps, fail_tensor_map;
static unsigned char widths[MAX_PARAMS];
static uintptr_t capturing_stream, current_ctx;
static const void* last_image;
static const void* images[4096];  /* every image loaded since the last reset */
#define FAKE_STATIC_SMEM 1024
static struct {
  const void* fn;
  int bytes;
} optins[1024];  /* every dynamic shared-memory opt-in of the process (functions load once) */
static int noptins;
static const void* last_fn;  /* the function of the last launch */

/* --- control, called by the test through ctypes ----------------------------------------- */
void fake_reset(void) {
  memset(&last, 0, sizeof last);
  launches = loads = pushes = pops = fail_load = nwidths = tensor_maps = fail_tensor_map = 0;
  capturing_stream = current_ctx = 0;
  last_image = NULL;
}
void fake_set(int fail_module_load, uintptr_t capturing, uintptr_t ctx) {
  fail_load = fail_module_load;
  capturing_stream = capturing;
  current_ctx = ctx;
}
/* The byte width (4 or 8) of each parameter of the next launch, so that it can be copied. */
void fake_expect(int n, const unsigned char* w) {
  nwidths = n < MAX_PARAMS ? n : MAX_PARAMS;
  memcpy(widths, w, nwidths);
}
int fake_launches(void) { return launches; }
int fake_loads(void) { return loads; }
int fake_pushes(void) { return pushes; }
int fake_pops(void) { return pops; }
const void* fake_last_image(void) { return last_image; }
const void* fake_image(int i) { return i < loads && i < 4096 ? images[i] : NULL; }
const struct fake_launch* fake_last_launch(void) { return &last; }
int fake_static_smem(void) { return FAKE_STATIC_SMEM; }
/* The dynamic shared memory the runtime opted the last launched function in to, or 0;
 * -1 if that function is not `symbol`.  (Functions of one symbol from different images are
 * different functions, each with its own opt-in.) */
int fake_dynamic_smem_optin(const char* symbol) {
  if (!last_fn || strcmp((const char*)last_fn, symbol)) return -1;
  for (int i = noptins - 1; i >= 0; --i)
    if (optins[i].fn == last_fn) return optins[i].bytes;
  return 0;
}

/* --- driver API ---------------------------------------------------------------------------- */
#define DEVICE_CTX ((uintptr_t)0xC0C0)
CUresult cuInit(unsigned flags) { (void)flags; return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 12080; return 0; }
CUresult cuGetErrorName(CUresult rc, const char** s) {
  *s = rc == 209 ? "CUDA_ERROR_NO_BINARY_FOR_GPU" : "CUDA_ERROR_UNKNOWN";
  return 0;
}
CUresult cuGetErrorString(CUresult rc, const char** s) {
  *s = rc == 209 ? "no kernel image is available for execution on the device" : "unknown error";
  return 0;
}
CUresult cuDeviceGet(int* d, int ordinal) { *d = ordinal; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
  (void)dev;
  *v = attr == 16 ? 132 : attr == 97 ? 232448 : 9;  /* SMs, shared opt-in, capability */
  return 0;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) { (void)dev; *ctx = (void*)DEVICE_CTX; return 0; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = (void*)current_ctx; return 0; }
CUresult cuCtxPushCurrent_v2(void* ctx) { pushes++; (void)ctx; return 0; }
CUresult cuCtxPopCurrent_v2(void** ctx) { pops++; *ctx = (void*)DEVICE_CTX; return 0; }
/* The bytes of an image as the driver reads them: an ELF64 file up to the end of its last
 * table or section, else NUL-terminated PTX text. */
static size_t image_size(const unsigned char* p) {
  if (memcmp(p, "\x7f" "ELF", 4)) return strlen((const char*)p) + 1;
  uint64_t phoff, shoff, offset, size, end;
  uint16_t phentsize, phnum, shentsize, shnum;
  uint32_t kind;
  memcpy(&phoff, p + 0x20, 8), memcpy(&shoff, p + 0x28, 8);
  memcpy(&phentsize, p + 0x36, 2), memcpy(&phnum, p + 0x38, 2);
  memcpy(&shentsize, p + 0x3A, 2), memcpy(&shnum, p + 0x3C, 2);
  end = phoff + (uint64_t)phentsize * phnum;
  if (shoff + (uint64_t)shentsize * shnum > end) end = shoff + (uint64_t)shentsize * shnum;
  for (unsigned i = 0; i < shnum; ++i) {
    const unsigned char* sh = p + shoff + (uint64_t)i * shentsize;
    memcpy(&kind, sh + 4, 4), memcpy(&offset, sh + 0x18, 8), memcpy(&size, sh + 0x20, 8);
    if (offset + (kind == 8 ? 0 : size) > end) end = offset + (kind == 8 ? 0 : size);  /* SHT_NOBITS */
  }
  return end;
}
size_t fake_image_size(const void* image) { return image ? image_size(image) : 0; }

CUresult cuModuleLoadData(void** mod, const void* image) {
  if (fail_load) return 209;
  const size_t n = image_size(image);
  void* copy = malloc(n);  /* never freed: a test process is short */
  memcpy(copy, image, n);
  if (loads < 4096) images[loads] = copy;
  loads++;
  last_image = copy;
  *mod = copy;
  return 0;
}
CUresult cuModuleGetFunction(void** fn, void* mod, const char* name) {
  (void)mod;
  *fn = strdup(name);  /* the "function" is its name; never freed: a test process is short */
  return 0;
}
CUresult cuFuncSetAttribute(void* fn, int attr, int value) {
  if (attr == 8 && noptins < 1024) {  /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
    optins[noptins].fn = fn;
    optins[noptins++].bytes = value;
  }
  return 0;
}
CUresult cuFuncGetAttribute(int* v, int attr, void* fn) {
  (void)fn;
  *v = attr == 1 ? FAKE_STATIC_SMEM : 0;  /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */
  return 0;
}
CUresult cuStreamIsCapturing(void* stream, int* status) {
  *status = capturing_stream && (uintptr_t)stream == capturing_stream;
  return 0;
}
/* A TMA descriptor that records its arguments: the address, the two dimensions, the row
 * stride, the box, then the swizzle, in 8-byte words (the test reads the launch's copy). */
static uint64_t maps[2][16]; /* the last two descriptors encoded */
int fake_tensor_maps(void) { return tensor_maps; }
const uint64_t* fake_tensor_map(int i) { return maps[(tensor_maps - 1 - i) & 1]; } /* 0: the last */
void fake_fail_tensor_map(int fail) { fail_tensor_map = fail; }
CUresult cuTensorMapEncodeTiled(uint64_t* map, int dtype, uint32_t rank, void* address, const uint64_t* dims,
                                const uint64_t* strides, const uint32_t* box, const uint32_t* unit, int interleave,
                                int swizzle, int l2, int oob) {
  (void)dtype, (void)unit, (void)interleave, (void)l2, (void)oob;
  /* the real driver refuses empty dimensions too (CUDA_ERROR_INVALID_VALUE) */
  if (rank != 2 || fail_tensor_map || dims[0] == 0 || dims[1] == 0) return 1;
  memset(map, 0, 128);
  map[0] = (uint64_t)(uintptr_t)address, map[1] = dims[0], map[2] = dims[1], map[3] = strides[0];
  map[4] = box[0], map[5] = box[1], map[6] = (uint64_t)swizzle;
  memcpy(maps[tensor_maps++ & 1], map, 128);
  return 0;
}
CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  (void)extra;
  launches++;
  last_fn = fn;
  memset(&last, 0, sizeof last);
  strncpy(last.symbol, (const char*)fn, sizeof last.symbol - 1);
  last.grid[0] = gx, last.grid[1] = gy, last.grid[2] = gz;
  last.block[0] = bx, last.block[1] = by, last.block[2] = bz;
  last.shared = shared;
  last.stream = (uintptr_t)stream;
  last.nparams = nwidths;
  for (int i = 0; i < nwidths; ++i) memcpy(last.params[i], params[i], widths[i]);
  return 0;
}
