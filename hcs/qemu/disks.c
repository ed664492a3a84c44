/*
 * disks.c: container layer images for the qemu backend (see disks.h):
 * mkfs.erofs run as a child with a deadline, and the XXH3-64 digest of an
 * image file. Nothing here keeps state between calls.
 */
#include "hcs/qemu/disks.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/clock.h"

extern char **environ;

/* The same tree gives the same image on every host: a fixed build time
 * (compact inodes then carry no per-file mtime) and a fixed UUID. */
#define EROFS_UUID "6c6d7368-696d-4c61-7965-720000000000"

int lm_qemu_file_digest(const char *path, uint64_t *digest)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	XXH3_state_t *st = XXH3_createState();
	if (!st) {
		close(fd);
		return -ENOMEM;
	}
	XXH3_64bits_reset(st);
	static _Thread_local char buf[1 << 16];
	int rc = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		XXH3_64bits_update(st, buf, (size_t)n);
	}
	if (!rc)
		*digest = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	close(fd);
	return rc;
}

/* The last line of a small log file, for an error message. */
static void last_line(const char *path, char *out, size_t cap)
{
	out[0] = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char buf[1024];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	char *l = strrchr(buf, '\n');
	snprintf(out, cap, "%s", l ? l + 1 : buf);
}

/* mkfs.erofs IMAGE SRC, bounded by LM_QEMU_IMAGE_MS. */
static int run_mkfs(const char *src, const char *image, const char *log, char *why, size_t cap)
{
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	char *argv[] = {"mkfs.erofs", "--quiet", "-T0", "-U" EROFS_UUID, (char *)image,
			(char *)src, NULL};
	pid_t pid;
	int rc = posix_spawnp(&pid, "mkfs.erofs", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc) {
		snprintf(why, cap, "cannot run mkfs.erofs (%s; apt-get install erofs-utils)",
			 strerror(rc));
		return -rc;
	}
	uint64_t deadline = lm_now_ns() + (uint64_t)LM_QEMU_IMAGE_MS * 1000000u;
	int status = 0;
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		if (w < 0 && errno != EINTR) {
			snprintf(why, cap, "mkfs.erofs: waitpid: %s", strerror(errno));
			return -ECHILD;
		}
		if (lm_now_ns() > deadline) {
			kill(pid, SIGKILL);
			while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
				;
			snprintf(why, cap, "mkfs.erofs did not finish within %d ms", LM_QEMU_IMAGE_MS);
			return -ETIMEDOUT;
		}
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char l[300];
		last_line(log, l, sizeof(l));
		snprintf(why, cap, "mkfs.erofs failed (%s %d)%s%s",
			 WIFEXITED(status) ? "status" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), l[0] ? ": " : "", l);
		return -EIO;
	}
	return 0;
}

int lm_qemu_disk_image(const char *src, const char *dir, const char *name, char *image,
		       size_t image_cap, uint64_t *digest, char *why, size_t why_cap)
{
	struct stat st;
	why[0] = 0;
	if (!src || src[0] != '/') {
		snprintf(why, why_cap, "layer %s: not an absolute path", src ? src : "(none)");
		return -EINVAL;
	}
	if (stat(src, &st) < 0) {
		int e = errno;
		snprintf(why, why_cap, "layer %s: %s", src, strerror(e));
		return -e;
	}
	int rc;
	if (S_ISDIR(st.st_mode)) {
		char log[PATH_MAX];
		if ((size_t)snprintf(image, image_cap, "%s/%s.erofs", dir, name) >= image_cap ||
		    (size_t)snprintf(log, sizeof(log), "%s/%s.mkfs.log", dir, name) >= sizeof(log)) {
			snprintf(why, why_cap, "layer %s: image path too long", src);
			return -ENAMETOOLONG;
		}
		char w[400];
		rc = run_mkfs(src, image, log, w, sizeof(w));
		unlink(log);
		if (rc) {
			unlink(image);
			snprintf(why, why_cap, "layer %s: %s", src, w);
			return rc;
		}
	} else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
		if ((size_t)snprintf(image, image_cap, "%s", src) >= image_cap) {
			snprintf(why, why_cap, "layer %s: path too long", src);
			return -ENAMETOOLONG;
		}
	} else {
		snprintf(why, why_cap, "layer %s: neither a directory nor an image file", src);
		return -EINVAL;
	}
	if ((rc = lm_qemu_file_digest(image, digest)) < 0) {
		snprintf(why, why_cap, "layer %s: read %s: %s", src, image, strerror(-rc));
		return rc;
	}
	return 0;
}
