/*
 * lmdirty.c: a memory writer for the test guest of tests/test_qemu.c.
 *
 *   lmdirty MIB [MBPS]
 *
 * Maps MIB MiB of anonymous memory and rewrites it forever, one 8-byte
 * word per 4 KiB page (a page is dirty however little of it is written),
 * never zero, so QEMU cannot send the pages as zero pages; at most MBPS
 * MB/s of pages (0 or absent: as fast as the vCPU goes), paced per MiB
 * with nanosleep. About every two seconds it prints "lmdirty rate=N MB/s"
 * (bytes of pages dirtied per second) on stdout, the serial console.
 *
 * Built freestanding with the host compiler (no libc in the initramfs but
 * busybox): raw Linux x86_64 system calls, its own _start.
 */
typedef unsigned long u64;

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}

#define SYS_write 1
#define SYS_mmap 9
#define SYS_nanosleep 35
#define SYS_exit 60
#define SYS_clock_gettime 228

static u64 now_ns(void)
{
	struct { long s, ns; } ts;
	sys6(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0, 0, 0, 0);
	return (u64)ts.s * 1000000000ul + (u64)ts.ns;
}

static u64 parse(const char *s)
{
	u64 v = 0;
	while (s && *s >= '0' && *s <= '9')
		v = v * 10 + (u64)(*s++ - '0');
	return v;
}

static void say_rate(u64 mbps)
{
	char b[48] = "lmdirty rate=";
	int n = 13;
	char t[24];
	int k = 0;
	do
		t[k++] = (char)('0' + mbps % 10);
	while ((mbps /= 10));
	while (k)
		b[n++] = t[--k];
	const char *tail = " MB/s\n";
	while (*tail)
		b[n++] = *tail++;
	sys6(SYS_write, 1, (long)b, n, 0, 0, 0);
}

void lmdirty_main(long *sp) __attribute__((used, noreturn));
void lmdirty_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	u64 mib = argc > 1 ? parse(argv[1]) : 64;
	u64 mbps = argc > 2 ? parse(argv[2]) : 0;
	if (!mib)
		mib = 64;
	u64 len = mib << 20;
	long p = sys6(SYS_mmap, 0, (long)len, 3 /* RW */, 0x22 /* PRIVATE|ANON */, -1, 0);
	if (p < 0 && p > -4096)
		sys6(SYS_exit, 1, 0, 0, 0, 0, 0);
	volatile u64 *mem = (volatile u64 *)p;
	u64 gen = 1, pages = 0, t0 = now_ns();
	u64 paced = 0, pace0 = t0;      /* bytes dirtied since pace0 */
	for (;;) {
		for (u64 mb = 0; mb < len; mb += 1u << 20) {
			for (u64 off = mb; off < mb + (1u << 20); off += 4096)
				mem[off / 8] = gen ^ off;
			pages += 256;
			if (!mbps)
				continue;
			paced += 1u << 20;
			/* due: when `paced` bytes are allowed at mbps (bytes/us) */
			u64 due = pace0 + paced * 1000 / mbps;
			u64 t = now_ns();
			if (due > t + 1000000) {
				struct { long s, ns; } d = {(long)((due - t) / 1000000000u),
							    (long)((due - t) % 1000000000u)};
				sys6(SYS_nanosleep, (long)&d, 0, 0, 0, 0, 0);
			} else if (t > due + 100000000) {
				pace0 = t;      /* far behind: do not make up for it */
				paced = 0;
			}
		}
		gen++;
		u64 t = now_ns();
		if (t - t0 >= 2000000000ul) {
			say_rate(pages * 4096 / ((t - t0) / 1000));
			pages = 0;
			t0 = t;
		}
	}
}

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"  xor %rbp, %rbp\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call lmdirty_main\n"
	"  hlt\n");
