/* The fusedaot C runtime (see fa_runtime.h): the driver, devices, loading and launching.
 * The image store and fusedaot_load's first pass are in fa_images.c. */
#define _GNU_SOURCE
#include "fa_runtime.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ errors */

static __thread char fa_message[FA_MESSAGE_BYTES];

FA_EXPORT const char* fusedaot_last_error(void) { return fa_message; }

int fa_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fa_message, sizeof fa_message, fmt, ap);
  va_end(ap);
  return code;
}

/* ------------------------------------------------------------------ driver */

static struct {
  CUresult (*Init)(unsigned);
  CUresult (*DriverGetVersion)(int*);
  CUresult (*GetErrorName)(CUresult, const char**);
  CUresult (*GetErrorString)(CUresult, const char**);
  CUresult (*DeviceGet)(CUdevice*, int);
  CUresult (*DeviceGetCount)(int*);
  CUresult (*DeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*CtxGetCurrent)(CUcontext*);
  CUresult (*CtxPushCurrent)(CUcontext);
  CUresult (*CtxPopCurrent)(CUcontext*);
  CUresult (*ModuleLoadData)(CUmodule*, const void*);
  CUresult (*ModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*FuncSetAttribute)(CUfunction, int, int);
  CUresult (*FuncGetAttribute)(int*, int, CUfunction);
  CUresult (*StreamIsCapturing)(CUstream, int*);
  CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                           unsigned, CUstream, void**, void**);
  CUresult (*TensorMapEncodeTiled)(CUtensorMap*, int, uint32_t, void*, const uint64_t*, const uint64_t*,
                                   const uint32_t*, const uint32_t*, int, int, int, int);
} cu;

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;
static int driver_rc;
static char driver_message[1024];
static fa_device_t* devices;
static int num_devices;

static const char* symbols[] = {
    "cuInit", "cuDriverGetVersion", "cuGetErrorName", "cuGetErrorString", "cuDeviceGet",
    "cuDeviceGetCount", "cuDeviceGetAttribute", "cuDevicePrimaryCtxRetain", "cuCtxGetCurrent",
    "cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2", "cuModuleLoadData", "cuModuleGetFunction",
    "cuFuncSetAttribute", "cuFuncGetAttribute", "cuStreamIsCapturing", "cuLaunchKernel",
    "cuTensorMapEncodeTiled",
};

static void driver_open(void) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    driver_rc = FA_ERR_NO_DRIVER;
    snprintf(driver_message, sizeof driver_message,
             "fusedaot: cannot load the CUDA driver (libcuda.so.1: %s); is an NVIDIA driver installed?",
             dlerror());
    return;
  }
  void** slots = (void**)&cu;
  for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; ++i) {
    slots[i] = dlsym(lib, symbols[i]);
    if (!slots[i]) {
      driver_rc = FA_ERR_NO_DRIVER;
      snprintf(driver_message, sizeof driver_message,
               "fusedaot: the CUDA driver lacks %s; a driver >= 525 is required", symbols[i]);
      return;
    }
  }
  CUresult rc = cu.Init(0);
  if (rc == CUDA_SUCCESS) rc = cu.DeviceGetCount(&num_devices);
  if (rc != CUDA_SUCCESS) {
    const char* s = "unknown error";
    cu.GetErrorString(rc, &s);
    driver_rc = rc;
    snprintf(driver_message, sizeof driver_message, "fusedaot: cuInit failed: %s", s);
    return;
  }
  devices = calloc(num_devices ? num_devices : 1, sizeof *devices);
  for (int i = 0; i < num_devices; ++i) {
    devices[i].ordinal = i;
    devices[i].lock = malloc(sizeof(pthread_mutex_t));
    pthread_mutex_init((pthread_mutex_t*)devices[i].lock, NULL);
  }
}

static int driver(void) {
  pthread_once(&driver_once, driver_open);
  return driver_rc ? fa_error(driver_rc, "%s", driver_message) : 0;
}

/* Turn a CUresult into our error: "<what> failed: <driver's text> (<name>)". */
int fa_check(CUresult rc, const char* what, const char* detail) {
  if (rc == CUDA_SUCCESS) return 0;
  const char *name = "?", *text = "unrecognized error code";
  cu.GetErrorName(rc, &name);
  cu.GetErrorString(rc, &text);
  return fa_error(rc, "fusedaot: %s%s%s failed: %s (%s)", what, detail ? " " : "", detail ? detail : "",
                  text, name);
}

int fa_module_load(CUmodule* mod, const unsigned char* image, const char* variant) {
  return fa_check(cu.ModuleLoadData(mod, image), "cuModuleLoadData for", variant);
}

FA_EXPORT int fusedaot_driver_version(int32_t* version) {
  int rc = driver();
  return rc ? rc : fa_check(cu.DriverGetVersion(version), "cuDriverGetVersion", NULL);
}

FA_EXPORT const char* fusedaot_arch(void) { return fa_arch_name; }
FA_EXPORT int fusedaot_num_kernels(void) { return fa_num_kernels; }

/* ------------------------------------------------------------------ devices */

static int device_init(fa_device_t* d) {
  CUdevice dev;
  int rc = fa_check(cu.DeviceGet(&dev, d->ordinal), "cuDeviceGet", NULL);
  if (!rc) rc = fa_check(cu.DevicePrimaryCtxRetain(&d->ctx, dev), "cuDevicePrimaryCtxRetain", NULL);
  if (!rc) rc = fa_check(cu.DeviceGetAttribute(&d->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev),
                      "cuDeviceGetAttribute", "(multiprocessor count)");
  if (!rc) rc = fa_check(cu.DeviceGetAttribute(&d->smem_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev),
                      "cuDeviceGetAttribute", "(shared memory opt-in)");
  if (rc) return rc;
  d->modules = calloc(fa_num_images ? fa_num_images : 1, sizeof(void*));
  d->functions = calloc(fa_num_kernels ? fa_num_kernels : 1, sizeof(void*));
  if (!d->modules || !d->functions) return fa_error(FA_ERR_NO_DRIVER, "fusedaot: out of host memory");
  return 0;
}

int fa_device_get(int ordinal, fa_device_t** out) {
  int rc = driver();
  if (rc) return rc;
  if (ordinal < 0 || ordinal >= num_devices)
    return fa_error(FA_ERR_BAD_DEVICE, "fusedaot: CUDA device %d does not exist (%d visible)", ordinal,
                    num_devices);
  fa_device_t* d = &devices[ordinal];
  if (!__atomic_load_n(&d->ready, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock((pthread_mutex_t*)d->lock);
    if (!d->ready) rc = device_init(d);
    if (!rc) __atomic_store_n(&d->ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock((pthread_mutex_t*)d->lock);
    if (rc) return rc;
  }
  *out = d;
  return 0;
}

/* Run with the device's context current, restoring the caller's afterwards. */
int fa_ctx_enter(fa_device_t* d, int* pushed) {
  CUcontext cur = NULL;
  *pushed = 0;
  int rc = fa_check(cu.CtxGetCurrent(&cur), "cuCtxGetCurrent", NULL);
  if (rc || cur == d->ctx) return rc;
  rc = fa_check(cu.CtxPushCurrent(d->ctx), "cuCtxPushCurrent", NULL);
  *pushed = !rc;
  return rc;
}

void fa_ctx_leave(int pushed) {
  CUcontext ignored;
  if (pushed) cu.CtxPopCurrent(&ignored);
}

/* Load kernel `k`'s module (if needed) and function; the caller holds d->lock and has
 * the device's context current. */
static int load_kernel(fa_device_t* d, int k, CUstream stream) {
  const fa_kernel_t* kd = &fa_kernels[k];
  if (stream) {
    int status = CU_STREAM_CAPTURE_STATUS_NONE;
    int rc = fa_check(cu.StreamIsCapturing(stream, &status), "cuStreamIsCapturing", NULL);
    if (rc) return rc;
    if (status != CU_STREAM_CAPTURE_STATUS_NONE)
      return fa_error(FA_ERR_CAPTURING,
                      "fusedaot: kernel %s is not loaded on device %d and the stream is capturing a CUDA "
                      "graph; call fusedaot.load() before capture",
                      kd->variant, d->ordinal);
  }
  CUmodule mod = (CUmodule)d->modules[kd->image];
  if (!mod) {
    int rc = fa_image_load(kd->image, kd->variant, &mod);
    if (rc) return rc;
    __atomic_store_n(&d->modules[kd->image], (void*)mod, __ATOMIC_RELEASE);
  }
  CUfunction fn;
  int rc = fa_check(cu.ModuleGetFunction(&fn, mod, kd->symbol), "cuModuleGetFunction for", kd->variant);
  if (rc) return rc;
  if (kd->shared > 0) {
    /* Without the opt-in a block gets 48 KiB of shared memory, static and dynamic together. */
    int static_bytes = 0;
    rc = fa_check(cu.FuncGetAttribute(&static_bytes, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn), "cuFuncGetAttribute for",
               kd->variant);
    if (rc) return rc;
    const int total = static_bytes + (int)kd->shared;
    if (total > 48 * 1024) {
      if (total > d->smem_optin)
        return fa_error(FA_ERR_UNAVAILABLE,
                        "fusedaot: kernel %s needs %d bytes of shared memory (%d static); device %d allows %d",
                        kd->variant, total, static_bytes, d->ordinal, d->smem_optin);
      rc = fa_check(cu.FuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)kd->shared),
                 "cuFuncSetAttribute for", kd->variant);
      if (rc) return rc;
    }
  }
  __atomic_store_n(&d->functions[k], (void*)fn, __ATOMIC_RELEASE);
  return 0;
}

static int get_function(fa_device_t* d, int k, CUstream stream, CUfunction* fn) {
  *fn = (CUfunction)__atomic_load_n(&d->functions[k], __ATOMIC_ACQUIRE);
  if (*fn) return 0;
  pthread_mutex_lock((pthread_mutex_t*)d->lock);
  int rc = d->functions[k] ? 0 : load_kernel(d, k, stream);
  pthread_mutex_unlock((pthread_mutex_t*)d->lock);
  *fn = (CUfunction)d->functions[k];
  return rc;
}

FA_EXPORT int fusedaot_load(void* stream, int32_t device) {
  fa_device_t* d;
  int pushed, rc = fa_device_get(device, &d);
  if (rc || (rc = fa_ctx_enter(d, &pushed))) return rc;
  int capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  if (stream) rc = fa_check(cu.StreamIsCapturing((CUstream)stream, &capturing), "cuStreamIsCapturing", NULL);
  if (!rc && capturing == CU_STREAM_CAPTURE_STATUS_NONE) rc = fa_load_modules(d);
  /* then the functions, as first calls would (during capture, this says what is missing) */
  CUfunction fn;
  for (int k = 0; k < fa_num_kernels && !rc; ++k) rc = get_function(d, k, (CUstream)stream, &fn);
  fa_ctx_leave(pushed);
  return rc;
}

FA_EXPORT int fusedaot_num_loaded(int32_t device) {
  fa_device_t* d;
  if (fa_device_get(device, &d)) return -1;
  int n = 0;
  for (int k = 0; k < fa_num_kernels; ++k) n += __atomic_load_n(&d->functions[k], __ATOMIC_ACQUIRE) != NULL;
  return n;
}

/* ------------------------------------------------------------------ launch */

int fa_launch(fa_device_t* d, int k, int64_t gx, int64_t gy, int64_t gz, unsigned bx, unsigned by,
              unsigned bz, unsigned shared, void* stream, void** args) {
  if (gx <= 0 || gy <= 0 || gz <= 0) return 0; /* empty input: nothing to do */
  if (gx > 2147483647LL || gy > 65535 || gz > 65535)
    return fa_error(FA_ERR_LAUNCH_BOUNDS, "fusedaot: %s needs a grid of %lld x %lld x %lld blocks, beyond CUDA's limits",
                    fa_kernels[k].variant, (long long)gx, (long long)gy, (long long)gz);
  int pushed, rc = fa_ctx_enter(d, &pushed);
  if (rc) return rc;
  CUfunction fn;
  rc = get_function(d, k, (CUstream)stream, &fn);
  if (!rc)
    rc = fa_check(cu.LaunchKernel(fn, (unsigned)gx, (unsigned)gy, (unsigned)gz, bx, by, bz, shared, (CUstream)stream,
                               args, NULL),
               "cuLaunchKernel for", fa_kernels[k].variant);
  fa_ctx_leave(pushed);
  return rc;
}

/* A TMA descriptor of the rows x cols bytes at ptr, rows `stride` bytes apart, copied in
 * box_rows x box_cols boxes with the 128-byte swizzle (what wgmma reads), zeros past the ends.
 * An empty matrix gets a descriptor of one row or column: no block of its launch reads it. */
int fa_tensor_map_2d(fa_tensor_map_t* map, const void* ptr, int64_t cols, int64_t rows, int64_t stride,
                     unsigned box_cols, unsigned box_rows) {
  int rc = driver();
  if (rc) return rc;
  const uint64_t dims[2] = {(uint64_t)(cols > 0 ? cols : 1), (uint64_t)(rows > 0 ? rows : 1)};
  const uint64_t strides[1] = {(uint64_t)stride};
  const uint32_t box[2] = {box_cols, box_rows}, unit[2] = {1, 1};
  return fa_check(cu.TensorMapEncodeTiled(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void*)ptr, dims, strides, box,
                                          unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
                  "cuTensorMapEncodeTiled", "(a TMA descriptor)");
}

int fa_no_variant(const char* op, int dtype) {
  return fa_error(FA_ERR_NO_VARIANT, "fusedaot: %s has no %s kernel for dtype code %d and these arguments",
                  op, fa_arch_name, dtype);
}

int fa_unavailable(const char* op, int device) {
  return fa_error(FA_ERR_UNAVAILABLE, "fusedaot: %s is not available on the %s library (device %d)", op,
                  fa_arch_name, device);
}
