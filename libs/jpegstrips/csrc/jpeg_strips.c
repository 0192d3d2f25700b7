/*
 * Row-by-row JPEG decoding with libjpeg-turbo's libjpeg API (the TurboJPEG API decodes only
 * whole images). The caller reads strips of rows as the decoder produces them, so work on the
 * first rows can start while the rest is still being decoded.
 *
 * libjpeg reports fatal errors by calling error_exit, which must not return: every entry point
 * below sets a jump target first, and an error returns -1 with the message kept. Warnings
 * (corrupt data the decoder could work around, a premature end of file) do not stop decoding;
 * the first one is kept and mm_jpeg_warned() reports it. The output options match what
 * TurboJPEG's tj3Decompress8 sets for TJPF_RGB, so the pixels are the same.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jpeglib.h"

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int warned;
  char message[JMSG_LENGTH_MAX];
} mm_error;

typedef struct {
  struct jpeg_decompress_struct cinfo;
  mm_error error;
} mm_jpeg;

static void on_error(j_common_ptr cinfo) {
  mm_error *error = (mm_error *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, error->message);
  longjmp(error->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
  mm_error *error = (mm_error *)cinfo->err;
  /* level -1 is a warning; higher levels are trace messages. */
  if (level < 0) {
    if (!error->warned) (*cinfo->err->format_message)(cinfo, error->message);
    error->warned = 1;
    cinfo->err->num_warnings++;
  }
}

static int create(mm_jpeg *jpeg) {
  if (setjmp(jpeg->error.jump)) return -1;
  jpeg_create_decompress(&jpeg->cinfo);
  return 0;
}

mm_jpeg *mm_jpeg_new(void) {
  mm_jpeg *jpeg = (mm_jpeg *)calloc(1, sizeof(mm_jpeg));
  if (!jpeg) return NULL;
  jpeg->cinfo.err = jpeg_std_error(&jpeg->error.pub);
  jpeg->error.pub.error_exit = on_error;
  jpeg->error.pub.emit_message = on_message;
  if (create(jpeg) != 0) {
    free(jpeg);
    return NULL;
  }
  return jpeg;
}

void mm_jpeg_free(mm_jpeg *jpeg) {
  if (!jpeg) return;
  if (!setjmp(jpeg->error.jump)) jpeg_destroy_decompress(&jpeg->cinfo);
  free(jpeg);
}

/* Reads the header and starts decoding RGB at scale_num/scale_denom; the output size goes to
 * *width and *height. For a progressive file this decodes every scan before it returns. */
int mm_jpeg_start(mm_jpeg *jpeg, const unsigned char *data, unsigned long size,
                  unsigned int scale_num, unsigned int scale_denom, unsigned int *width,
                  unsigned int *height) {
  if (setjmp(jpeg->error.jump)) return -1;
  jpeg_mem_src(&jpeg->cinfo, data, size);
  jpeg_read_header(&jpeg->cinfo, TRUE);
  jpeg->cinfo.out_color_space = JCS_EXT_RGB;
  jpeg->cinfo.scale_num = scale_num;
  jpeg->cinfo.scale_denom = scale_denom;
  jpeg_start_decompress(&jpeg->cinfo);
  *width = jpeg->cinfo.output_width;
  *height = jpeg->cinfo.output_height;
  return 0;
}

/* Decodes up to max_rows rows into rows (pitch bytes apart); the number decoded goes to *read
 * (fewer only at the end of the image). */
int mm_jpeg_read(mm_jpeg *jpeg, unsigned char *rows, size_t pitch, unsigned int max_rows,
                 unsigned int *read) {
  JSAMPROW pointers[16];
  *read = 0;
  if (setjmp(jpeg->error.jump)) return -1;
  /* *read, not a local, counts: locals changed after setjmp are undefined after longjmp. */
  while (*read < max_rows && jpeg->cinfo.output_scanline < jpeg->cinfo.output_height) {
    unsigned int batch = max_rows - *read, i;
    if (batch > 16) batch = 16;
    for (i = 0; i < batch; i++) pointers[i] = rows + (size_t)(*read + i) * pitch;
    *read += jpeg_read_scanlines(&jpeg->cinfo, pointers, batch);
  }
  return 0;
}

int mm_jpeg_finish(mm_jpeg *jpeg) {
  if (setjmp(jpeg->error.jump)) return -1;
  jpeg_finish_decompress(&jpeg->cinfo);
  return 0;
}

int mm_jpeg_warned(const mm_jpeg *jpeg) { return jpeg->error.warned; }

const char *mm_jpeg_message(const mm_jpeg *jpeg) { return jpeg->error.message; }
