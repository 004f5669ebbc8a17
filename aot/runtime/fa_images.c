/* The image store: images unpacked from the library's LZMA blocks (fa_lzma.h) as they load,
 * handed out by fusedaot_image, and fusedaot_load's first pass, which unpacks every block on
 * several threads.  Part of the runtime (fa_runtime.h). */
#define _GNU_SOURCE
#include "fa_runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fa_lzma.h"

/* The block last unpacked, decoded as far as the images loaded from it so far: loading in
 * table order decodes each block once.  Images are the same on every device, so one for
 * the process; unpack_lock is held from unpacking an image until the driver has read it. */
static pthread_mutex_t unpack_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  int block; /* -1: none */
  fa_lzma_t* decoder;
  unsigned char* bytes;
} unpacked = {-1, NULL, NULL};

static const char* image_variant(int image) { /* a variant that uses the image, for messages */
  for (int k = 0; k < fa_num_kernels; ++k)
    if (fa_kernels[k].image == image) return fa_kernels[k].variant;
  return "?";
}

/* Point *bytes at image i, unpacking its block as far as the image ends. */
static int image_bytes(int i, const char* variant, const unsigned char** bytes) {
  const fa_image_t* im = &fa_images[i];
  const fa_block_t* b = &fa_blocks[im->block];
  if (unpacked.block != im->block) {
    free(unpacked.bytes);
    unpacked.block = -1;
    unpacked.bytes = malloc(b->unpacked);
    if (!unpacked.decoder) unpacked.decoder = malloc(sizeof *unpacked.decoder);
    if (!unpacked.bytes || !unpacked.decoder)
      return fa_error(FA_ERR_NO_DRIVER, "fusedaot: out of host memory (%zu bytes to unpack the image of %s)",
                      b->unpacked + sizeof *unpacked.decoder, variant);
    if (!fa_lzma_init(unpacked.decoder, b->props, b->data, b->size, unpacked.bytes, b->unpacked))
      unpacked.block = im->block;
  }
  if (unpacked.block < 0 || fa_lzma_run(unpacked.decoder, im->offset + im->size)) {
    unpacked.block = -1;
    return fa_error(FA_ERR_IMAGE,
                    "fusedaot: the image of %s in libfusedaot_%s.so does not unpack (block %d: %s); "
                    "the library is damaged: reinstall fusedaot",
                    variant, fa_arch_name, im->block, unpacked.decoder->error);
  }
  *bytes = unpacked.bytes + im->offset;
  return 0;
}

FA_EXPORT int fusedaot_num_images(void) { return fa_num_images; }

/* Copy image `image` (unpacked) into out if it fits in capacity bytes; *size: its bytes. */
FA_EXPORT int fusedaot_image(int32_t image, void* out, size_t capacity, size_t* size) {
  if (image < 0 || image >= fa_num_images)
    return fa_error(FA_ERR_IMAGE, "fusedaot: image %d does not exist (the %s library has %d)", image,
                    fa_arch_name, fa_num_images);
  *size = fa_images[image].size;
  if (!out || capacity < *size) return 0;
  const unsigned char* bytes = NULL;
  pthread_mutex_lock(&unpack_lock);
  int rc = image_bytes(image, image_variant(image), &bytes);
  if (!rc) memcpy(out, bytes, *size);
  pthread_mutex_unlock(&unpack_lock);
  return rc;
}

/* Load image i as a module (into the current context), unpacking it first. */
int fa_image_load(int i, const char* variant, CUmodule* mod) {
  const unsigned char* image = NULL;
  pthread_mutex_lock(&unpack_lock);
  int rc = image_bytes(i, variant, &image);
  if (!rc) rc = fa_module_load(mod, image, variant);
  pthread_mutex_unlock(&unpack_lock);
  return rc;
}

/* fusedaot_load's first pass: every block unpacked whole on one of several threads, each in
 * a buffer of its own and outside any lock, and its images' modules loaded under the
 * device's lock.  Unpacking is most of a library's load time (28.6 MB of sm90 images at about
 * 100 MB/s a thread); the driver's module loads stay one at a time. */
typedef struct {
  fa_device_t* d;
  int next; /* the next block to take */
  pthread_mutex_t lock;
  int rc; /* the first failure, and its message */
  char message[FA_MESSAGE_BYTES];
} loader_t;

/* The first image of block b: the table lists images in block order (aot/pack.py's plan). */
static int first_image(int b) {
  int lo = 0, hi = fa_num_images;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (fa_images[mid].block < b) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int load_block(fa_device_t* d, int b, fa_lzma_t* decoder, unsigned char** bytes, size_t* capacity) {
  const int first = first_image(b);
  int end = first, todo = 0;
  for (; end < fa_num_images && fa_images[end].block == b; ++end) todo |= !d->modules[end];
  if (!todo) return 0;
  const fa_block_t* blk = &fa_blocks[b];
  if (*capacity < blk->unpacked) {
    free(*bytes);
    *capacity = 0;
    if (!(*bytes = malloc(blk->unpacked)))
      return fa_error(FA_ERR_NO_DRIVER, "fusedaot: out of host memory (%zu bytes to unpack a block of images)",
                      blk->unpacked);
    *capacity = blk->unpacked;
  }
  if (fa_lzma_init(decoder, blk->props, blk->data, blk->size, *bytes, blk->unpacked) ||
      fa_lzma_run(decoder, blk->unpacked))
    return fa_error(FA_ERR_IMAGE,
                    "fusedaot: block %d of the images in libfusedaot_%s.so does not unpack (%s); the library is "
                    "damaged: reinstall fusedaot",
                    b, fa_arch_name, decoder->error);
  int rc = 0;
  pthread_mutex_lock((pthread_mutex_t*)d->lock);
  for (int i = first; i < end && !rc; ++i) {
    if (d->modules[i]) continue;
    CUmodule mod;
    rc = fa_module_load(&mod, *bytes + fa_images[i].offset, image_variant(i));
    if (!rc) __atomic_store_n(&d->modules[i], (void*)mod, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock((pthread_mutex_t*)d->lock);
  return rc;
}

static void* loader_main(void* arg) {
  loader_t* L = arg;
  fa_lzma_t* decoder = malloc(sizeof *decoder);
  unsigned char* bytes = NULL;
  size_t capacity = 0;
  int pushed, rc = decoder ? fa_ctx_enter(L->d, &pushed) : fa_error(FA_ERR_NO_DRIVER, "fusedaot: out of host memory");
  if (decoder && !rc) {
    for (int b; !rc && !__atomic_load_n(&L->rc, __ATOMIC_RELAXED) &&
                (b = __atomic_fetch_add(&L->next, 1, __ATOMIC_RELAXED)) < fa_num_blocks;)
      rc = load_block(L->d, b, decoder, &bytes, &capacity);
    fa_ctx_leave(pushed);
  }
  free(decoder);
  free(bytes);
  if (rc) {
    pthread_mutex_lock(&L->lock);
    if (!L->rc) L->rc = rc, snprintf(L->message, sizeof L->message, "%s", fusedaot_last_error());
    pthread_mutex_unlock(&L->lock);
  }
  return NULL;
}

/* Unpack and load every module of the device, on up to 8 threads (this one among them). */
int fa_load_modules(fa_device_t* d) {
  loader_t L = {.d = d};
  pthread_mutex_init(&L.lock, NULL);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int extra = (int)fa_min(fa_min(cpus > 0 ? cpus : 1, 8), fa_num_blocks) - 1, started = 0;
  pthread_t threads[8];
  while (started < extra && !pthread_create(&threads[started], NULL, loader_main, &L)) ++started;
  loader_main(&L); /* fewer threads if some could not start: the rest is done here */
  for (int i = 0; i < started; ++i) pthread_join(threads[i], NULL);
  pthread_mutex_destroy(&L.lock);
  return L.rc ? fa_error(L.rc, "%s", L.message) : 0;
}
