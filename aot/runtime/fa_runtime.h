/* The fusedaot C runtime: what the generated dispatch code calls.
 *
 * libcuda.so.1 is opened with dlopen on first use (no DT_NEEDED entry), so a library
 * imports on a machine without a driver.  Modules are loaded per device, lazily and
 * thread-safely, or all at once by fusedaot_load(); an image is unpacked from its LZMA
 * block just before it is loaded.  Every failure returns a nonzero code and leaves a
 * message for fusedaot_last_error(). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "cuda_driver.h"

#define FA_EXPORT __attribute__((visibility("default")))
#define FA_ALIGNED16(p) ((((uintptr_t)(p)) & 15u) == 0)

/* fusedaot's own error codes, above the driver's CUresult range */
#define FA_ERR_NO_DRIVER 10001
#define FA_ERR_BAD_DEVICE 10002
#define FA_ERR_NO_VARIANT 10003
#define FA_ERR_CAPTURING 10004
#define FA_ERR_UNAVAILABLE 10005
#define FA_ERR_LAUNCH_BOUNDS 10006
#define FA_ERR_SCRATCH 10007
#define FA_ERR_IMAGE 10008

#define FA_MESSAGE_BYTES 2048 /* fusedaot_last_error()'s buffer, a thread's */

typedef struct {
  const unsigned char* data; /* a raw LZMA stream (fa_lzma.h) */
  size_t size;               /* bytes at data */
  size_t unpacked;           /* bytes it decodes to: images, 16-byte aligned, back to back */
  unsigned props;            /* its LZMA properties byte */
} fa_block_t;

typedef struct {
  int block;     /* index into fa_blocks */
  size_t offset; /* where the image starts in its unpacked block */
  size_t size;   /* a cubin's bytes, or NUL-terminated PTX's */
} fa_image_t;

typedef struct {
  const char* variant; /* spec name */
  const char* symbol;  /* function name inside the image */
  int image;           /* index into fa_images */
  unsigned shared;     /* dynamic shared memory bytes */
} fa_kernel_t;

typedef struct fa_device fa_device_t;
struct fa_device {
  int ordinal;
  int sms;        /* multiprocessor count, for grid sizing */
  int smem_optin; /* largest dynamic shared memory a block may opt in to */
  CUcontext ctx;  /* the device's primary context (the one PyTorch uses) */
  void* lock;
  void* volatile* modules;   /* CUmodule per image, NULL until loaded */
  void* volatile* functions; /* CUfunction per kernel, NULL until loaded */
  volatile int ready;
};

/* Tables of the generated code for this library's arch. */
extern const char fa_arch_name[];
extern const fa_block_t fa_blocks[];
extern const int fa_num_blocks;
extern const fa_image_t fa_images[];
extern const int fa_num_images;
extern const fa_kernel_t fa_kernels[];
extern const int fa_num_kernels;

static inline int64_t fa_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t fa_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t fa_max(int64_t a, int64_t b) { return a > b ? a : b; }

int fa_error(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int fa_device_get(int ordinal, fa_device_t** out);
int fa_launch(fa_device_t* dev, int kernel, int64_t gx, int64_t gy, int64_t gz, unsigned bx,
              unsigned by, unsigned bz, unsigned shared, void* stream, void** args);
int fa_no_variant(const char* op, int dtype);
int fa_unavailable(const char* op, int device);
/* A TMA descriptor for a CUDA C++ kernel's argument (aot/specs' TensorMap says what it describes). */
typedef CUtensorMap fa_tensor_map_t;
int fa_tensor_map_2d(fa_tensor_map_t* map, const void* ptr, int64_t cols, int64_t rows, int64_t stride,
                     unsigned box_cols, unsigned box_rows);

/* Shared by the runtime's two files: fa_runtime.c (driver, devices, launches) and fa_images.c
 * (the image store, fusedaot_load's first pass). */
int fa_check(CUresult rc, const char* what, const char* detail);
int fa_ctx_enter(fa_device_t* d, int* pushed);
void fa_ctx_leave(int pushed);
int fa_module_load(CUmodule* mod, const unsigned char* image, const char* variant);
int fa_image_load(int image, const char* variant, CUmodule* mod);
int fa_load_modules(fa_device_t* d);
const char* fusedaot_last_error(void);
