/* The four ggml functions ggml-quants.c calls, for building llama.cpp's reference quantizers
 * alone (bench/peers/ggml_ref.py): sizes of the block types those quantizers write. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct size {
  int type, block, bytes;
};
static const struct size kSizes[] = {
    {0, 1, 4},      {1, 1, 2},      {2, 32, 18},   {3, 32, 20},    {6, 32, 22},
    {7, 32, 24},    {8, 32, 34},    {10, 256, 84}, {11, 256, 110}, {12, 256, 144},
    {13, 256, 176}, {14, 256, 210}, {20, 32, 18},
};

static const struct size* find(int type) {
  for (size_t i = 0; i < sizeof(kSizes) / sizeof(kSizes[0]); ++i)
    if (kSizes[i].type == type) return &kSizes[i];
  fprintf(stderr, "ggml_ref_shim: type %d not in the table\n", type);
  abort();
}

void ggml_abort(const char* file, int line, const char* fmt, ...) {
  fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
  abort();
}
size_t ggml_type_size(int type) {
  return (size_t)find(type)->bytes;
}
size_t ggml_row_size(int type, int64_t ne) {
  const struct size* s = find(type);
  return (size_t)s->bytes * (size_t)(ne / s->block);
}
const char* ggml_type_name(int type) {
  (void)type;
  return "?";
}
