// CFLAGS: -O2 -mavx2
/*
 * avx: live values in every vector register across the checkpoint.
 * An assembly loop keeps 16 accumulators in ymm0..ymm15 (and, if the CPU has
 * AVX-512F, 16 more in zmm16..zmm31 plus k1..k7), adds known increments to all
 * lanes, and sleeps with raw nanosleep syscalls INSIDE the loop, so whenever the
 * process is frozen (most likely in the syscall) the values exist only in
 * registers. An 80-bit x87 value sits in st(0) for the whole block; the x87
 * control word (rounding: truncate) and MXCSR (round toward zero + FTZ) are
 * non-default. After each block the C code checks every lane against
 * init + iterations * increment and the FPU control state; it writes FAIL and exits
 * at once if anything is off. On <status>.go it writes PASS with the iteration count.
 */
#include "common.h"
#include <immintrin.h>

struct avxstate {
	uint64_t v[16][4];    /* 0    ymm0..15 */
	uint64_t inc[16][4];  /* 512 */
	long double x87in;    /* 1024 */
	long double x87out;   /* 1040 */
	uint64_t iters;       /* 1056 */
	uint64_t pad;         /* 1064 */
	uint64_t z[16][8];    /* 1072 zmm16..31 */
	uint64_t zinc[16][8]; /* 2096 */
	uint16_t kin[8];      /* 3120 k0..k7 (k0 unused) */
	uint16_t kout[8];     /* 3136 */
} __attribute__((aligned(64)));

_Static_assert(__builtin_offsetof(struct avxstate, z) == 1072, "layout");
_Static_assert(__builtin_offsetof(struct avxstate, zinc) == 2096, "layout");
_Static_assert(__builtin_offsetof(struct avxstate, kin) == 3120, "layout");
_Static_assert(__builtin_offsetof(struct avxstate, kout) == 3136, "layout");

void avx_block(struct avxstate *s, long outer, long inner, struct timespec *ts);
void avx512_block(struct avxstate *s, long outer, long inner, struct timespec *ts);

#define Y_LOAD(n) "vmovdqu " #n "*32(%r12), %ymm" #n "\n"
#define Y_STORE(n) "vmovdqu %ymm" #n ", " #n "*32(%r12)\n"
#define Y_ADD(n) "vpaddq 512+" #n "*32(%r12), %ymm" #n ", %ymm" #n "\n"
#define Z_LOAD(n, r) "vmovdqu64 1072+" #n "*64(%r12), %zmm" #r "\n"
#define Z_STORE(n, r) "vmovdqu64 %zmm" #r ", 1072+" #n "*64(%r12)\n"
#define Z_ADD(n, r) "vpaddq 2096+" #n "*64(%r12), %zmm" #r ", %zmm" #r "\n"
#define K_LOAD(n) "kmovw 3120+" #n "*2(%r12), %k" #n "\n"
#define K_STORE(n) "kmovw %k" #n ", 3136+" #n "*2(%r12)\n"
#define Y16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define Z16(M)                                                                              \
	M(0, 16) M(1, 17) M(2, 18) M(3, 19) M(4, 20) M(5, 21) M(6, 22) M(7, 23) M(8, 24) M(9, 25) \
	M(10, 26) M(11, 27) M(12, 28) M(13, 29) M(14, 30) M(15, 31)
#define K7(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

#define PROLOGUE                                                                  \
	"push %rbx\n push %r12\n push %r13\n push %r14\n push %r15\n"             \
	"mov %rdi, %r12\n mov %rsi, %r13\n mov %rdx, %r14\n mov %rcx, %r15\n"     \
	"xor %ebx, %ebx\n"                                                        \
	"fldt 1024(%r12)\n"
#define SLEEP                                                                     \
	"mov $35, %eax\n mov %r15, %rdi\n xor %esi, %esi\n syscall\n" /* nanosleep */
#define EPILOGUE                                                                  \
	"fstpt 1040(%r12)\n mov %rbx, 1056(%r12)\n vzeroupper\n"                  \
	"pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbx\n ret\n"

__asm__(".text\n .globl avx_block\n .type avx_block,@function\n avx_block:\n" PROLOGUE
	Y16(Y_LOAD)
	"1: mov %r14, %rcx\n"
	"2:\n" Y16(Y_ADD)
	"inc %rbx\n dec %rcx\n jnz 2b\n"
	SLEEP
	"dec %r13\n jnz 1b\n"
	Y16(Y_STORE) EPILOGUE
	".size avx_block, .-avx_block\n");

__asm__(".text\n .globl avx512_block\n .type avx512_block,@function\n avx512_block:\n" PROLOGUE
	Y16(Y_LOAD) Z16(Z_LOAD) K7(K_LOAD)
	"1: mov %r14, %rcx\n"
	"2:\n" Y16(Y_ADD) Z16(Z_ADD)
	"inc %rbx\n dec %rcx\n jnz 2b\n"
	SLEEP
	"dec %r13\n jnz 1b\n"
	Y16(Y_STORE) Z16(Z_STORE) K7(K_STORE) EPILOGUE
	".size avx512_block, .-avx512_block\n");

static struct avxstate st, init;

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

#define CW_WANTED 0x0F7F     /* x87: extended precision, round toward zero, all masked */
#define MXCSR_WANTED 0xFF80  /* SSE: FTZ, round toward zero, all masked */

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (!__builtin_cpu_supports("avx2"))
		die("CPU has no AVX2");
	int has512 = __builtin_cpu_supports("avx512f");

	for (int r = 0; r < 16; r++)
		for (int l = 0; l < 4; l++) {
			st.v[r][l] = mix(r * 4 + l + 1);
			st.inc[r][l] = mix(1000 + r * 4 + l) | 1;
		}
	for (int r = 0; r < 16; r++)
		for (int l = 0; l < 8; l++) {
			st.z[r][l] = mix(5000 + r * 8 + l);
			st.zinc[r][l] = mix(9000 + r * 8 + l) | 1;
		}
	for (int k = 1; k < 8; k++)
		st.kin[k] = (uint16_t)(0x1111 * k ^ 0xA5C3);
	st.x87in = 3.14159265358979323846264338327950288L;
	init = st;

	uint16_t cw = CW_WANTED;
	__asm__ volatile("fldcw %0" ::"m"(cw));
	_mm_setcsr(MXCSR_WANTED);
	volatile double one = 1.0, three = 3.0;
	double third_rz = one / three;
	uint64_t third_bits;
	memcpy(&third_bits, &third_rz, 8);

	struct timespec ts = { 0, 1000000 }; /* 1 ms */
	uint64_t total = 0, blocks = 0;
	int ready = 0;
	for (;;) {
		if (has512)
			avx512_block(&st, 20, 400, &ts);
		else
			avx_block(&st, 20, 400, &ts);
		total += st.iters;
		blocks++;

		for (int r = 0; r < 16; r++)
			for (int l = 0; l < 4; l++) {
				uint64_t want = init.v[r][l] + total * init.inc[r][l];
				if (st.v[r][l] != want)
					die("ymm%d lane %d after %llu iterations: expected 0x%016llx got 0x%016llx",
					    r, l, (unsigned long long)total, (unsigned long long)want,
					    (unsigned long long)st.v[r][l]);
			}
		if (has512) {
			for (int r = 0; r < 16; r++)
				for (int l = 0; l < 8; l++) {
					uint64_t want = init.z[r][l] + total * init.zinc[r][l];
					if (st.z[r][l] != want)
						die("zmm%d lane %d after %llu iterations: expected 0x%016llx got 0x%016llx",
						    r + 16, l, (unsigned long long)total,
						    (unsigned long long)want, (unsigned long long)st.z[r][l]);
				}
			for (int k = 1; k < 8; k++)
				if (st.kout[k] != st.kin[k])
					die("k%d: expected 0x%04x got 0x%04x", k, st.kin[k], st.kout[k]);
		}
		if (memcmp(&st.x87out, &st.x87in, 10) != 0)
			die("x87 st(0): expected %.20Lf got %.20Lf", st.x87in, st.x87out);
		uint16_t cw_now;
		__asm__ volatile("fnstcw %0" : "=m"(cw_now));
		if (cw_now != CW_WANTED)
			die("x87 control word: expected 0x%04x got 0x%04x", CW_WANTED, cw_now);
		unsigned mx = _mm_getcsr() & ~0x3fu; /* ignore sticky exception flags */
		if (mx != MXCSR_WANTED)
			die("MXCSR: expected 0x%04x got 0x%04x", MXCSR_WANTED, mx);
		double t = one / three;
		uint64_t tb;
		memcpy(&tb, &t, 8);
		if (tb != third_bits)
			die("1.0/3.0 under round-toward-zero: expected bits 0x%016llx got 0x%016llx",
			    (unsigned long long)third_bits, (unsigned long long)tb);

		if (!ready) {
			status("READY avx512=%s", has512 ? "yes" : "no");
			ready = 1;
		}
		if (go_requested())
			break;
	}
	finish("iterations=%llu blocks=%llu avx512=%s", (unsigned long long)total,
	       (unsigned long long)blocks, has512 ? "yes" : "no");
}
