// The fastest 2-rank, 64 MiB float32 sum allreduce this machine allows, as a ceiling
// for hcomm's (README, "Speed"). No library and no kernel copies: both processes'
// buffers are shared memory mapped into both, each rank sums its half straight out of
// the peer's memory with streaming stores, in pieces, and copies the peer's finished
// half straight across. hcomm cannot do this with a caller's private buffers (the peer
// has to go through process_vm_readv); this is what any design could reach at best.
//
//   gcc -O3 -mavx2 benchmarks/ideal_shm_allreduce.c -o /tmp/ideal && /tmp/ideal
//
// Prints the best of 10 timed iterations, out of place and in place, and the issue's
// bound measured in the same run: `a += b` over 64 MiB in one process (on huge pages,
// as numpy's arrays are; shared memory here gets 4 KiB pages) moves 3 x 64 MiB; an ideal 2-rank allreduce moves 2.5 x 64 MiB per rank, so the bound
// busbw is 1.2 x the array rate of `a += b`.
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BYTES (64u << 20)
#define COUNT (BYTES / 4)
#define PIECE ((4u << 20) / 4)  // floats per piece

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void* shared(size_t n) {
  void* p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(1); }
  return p;
}

static void add(float* d, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 8) _mm256_stream_ps(d + i, _mm256_add_ps(_mm256_load_ps(a + i), _mm256_load_ps(b + i)));
  _mm_sfence();
}

static void copy(float* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; i += 8) _mm256_stream_ps(d + i, _mm256_load_ps(s + i));
  _mm_sfence();
}

static float* privateArray(void) {  // as numpy allocates 64 MiB: asking for huge pages
  float* p = aligned_alloc(2u << 20, BYTES);
  madvise(p, BYTES, MADV_HUGEPAGE);
  return p;
}

static double plusEquals(void) {  // a += b, one process, best of 10
  float* a = privateArray();
  float* b = privateArray();
  for (size_t i = 0; i < COUNT; ++i) a[i] = b[i] = 1;
  double best = 1e9;
  for (int it = 0; it < 10; ++it) {
    double t0 = now();
    for (size_t i = 0; i < COUNT; ++i) a[i] += b[i];
    double t = now() - t0;
    if (t < best) best = t;
  }
  free(a);
  free(b);
  return best;
}

// One rank's part; flags[r] is this rank's progress counter, shared with the peer.
static double allreduce(int r, float* in[2], float* out[2], _Atomic long* flags, long* gen) {
  size_t half = COUNT / 2, mine = r * half, other = (1 - r) * half;
  long g = (*gen += 1000);
  atomic_store(&flags[r], g); while (atomic_load(&flags[1 - r]) < g) {}
  double t0 = now();
  for (size_t off = 0; off < half; off += PIECE) {
    add(out[r] + mine + off, in[r] + mine + off, in[1 - r] + mine + off, PIECE);
    atomic_store(&flags[r], g + 1 + (long)(off / PIECE));
  }
  for (size_t off = 0; off < half; off += PIECE) {
    while (atomic_load(&flags[1 - r]) < g + 1 + (long)(off / PIECE)) {}
    copy(out[r] + other + off, out[1 - r] + other + off, PIECE);
  }
  atomic_store(&flags[r], g + 999); while (atomic_load(&flags[1 - r]) < g + 999) {}
  return now() - t0;
}

int main(void) {
  double tPlus = plusEquals();
  float *in[2], *out[2], *same[2];
  for (int r = 0; r < 2; ++r) {
    in[r] = shared(BYTES);
    out[r] = shared(BYTES);
    same[r] = in[r];
  }
  _Atomic long* flags = shared(4096);
  int r = fork() == 0 ? 1 : 0;
  long gen = 0;
  double best[2] = {1e9, 1e9};
  for (int placed = 0; placed < 2; ++placed) {
    for (int it = 0; it < 12; ++it) {
      for (size_t i = 0; i < COUNT; ++i) in[r][i] = (float)(r + 1);  // in place overwrites the input
      double t = allreduce(r, in, placed ? same : out, flags, &gen);
      float* result = placed ? in[r] : out[r];
      if (result[0] != 3.0f || result[COUNT - 1] != 3.0f) { fprintf(stderr, "wrong result\n"); return 1; }
      if (it >= 2 && t < best[placed]) best[placed] = t;
    }
  }
  if (r == 1) return 0;
  wait(NULL);
  double bound = 1.2 * BYTES / tPlus;  // bytes per second of busbw
  printf("a += b 64 MiB: %.2f ms (%.2f GB/s of array); 2-rank allreduce bound %.2f GB/s busbw\n", tPlus * 1e3,
         BYTES / tPlus / 1e9, bound / 1e9);
  for (int placed = 0; placed < 2; ++placed)
    printf("ideal 2-rank allreduce, %s: %.2f ms, %.2f GB/s busbw, %.2f of the bound\n",
           placed ? "in place    " : "out of place", best[placed] * 1e3, BYTES / best[placed] / 1e9,
           BYTES / best[placed] / bound);
  return 0;
}
