/*
 * io.c: a process's stdio and the host calls that follow it (Wait,
 * Output, AckOutput, WriteStdin, CloseStdin, ResizePty). Agent thread
 * only; the fds are watched by the agent's libev loop.
 *
 * Output. Each of stdout and stderr (a pty has only "stdout") is read
 * into a ring of LM_AGENT_OUT_CAP bytes addressed by stream offset: the
 * bytes [base, end) are kept until the host acknowledges them
 * (AckOutput), because bytes sent on a stream may still be lost with the
 * connection (in QEMU's buffers or the relay's) when the host goes away.
 * An Output call names the offsets the host already has; the agent sends
 * from there, so after a reconnect nothing is lost and nothing repeats
 * (the client trims nothing; it may check). A host that never saw the
 * process (the destination of a live migration) asks from_acknowledged:
 * it starts where the acknowledged output ends; the source host
 * acknowledges each chunk before it writes it anywhere, so the two hosts'
 * copies of a stream neither overlap nor leave a gap. When the ring is full the
 * agent stops reading the pipe, and the process blocks in write(2): a
 * host that never acknowledges slows its container down, it never makes
 * the agent drop output or grow.
 *
 * Events on a stream, in order: data; a file's EOF (once all its data was
 * sent); the exit (once the process was reaped and the data read by
 * then was sent: the pipes are drained when the exit is seen, so what the
 * process wrote comes before its exit); then the stream ends when both
 * files are at EOF. A new Output call for the same process ends the
 * previous stream (Aborted) and starts over from its own offsets.
 *
 * Exit statuses stay with the process until DeleteProcess /
 * DeleteContainer: Wait answers at once for an exited process, as often
 * as asked, and the exit event is in every later Output stream.
 *
 * Stdin. WriteStdin carries the offset of its first byte: bytes the agent
 * already took (a retry after a lost answer) are skipped, so writes are
 * exactly-once; the agent holds up to LM_AGENT_IN_CAP bytes the process
 * has not read yet and answers with how far it got (the client sends the
 * rest again). CloseStdin closes the pipe once the held bytes are
 * written (on a pty it sends the EOF character instead).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "guest/agent/agent.h"
#include "util/log.h"

#define MOD "agent"
#define CHUNK (32u << 10)

static void pump(struct proc *p);

/* ---- output ----------------------------------------------------------- */

static size_t ring_free(const struct outbuf *o)
{
	return o->cap - (size_t)(o->end - o->base);
}

static void out_close(struct proc *p, int i)
{
	struct outbuf *o = &p->out[i];
	if (o->fd < 0)
		return;
	ev_io_stop(lm_agent.loop, &o->w);
	if (o->fd != p->pty)
		close(o->fd);
	o->fd = -1;
	o->eof = true;
}

/* Reads what the pipe has (up to the ring's room); false at EOF/error. */
static bool out_read(struct proc *p, int i)
{
	struct outbuf *o = &p->out[i];
	while (o->fd >= 0 && ring_free(o)) {
		size_t at = (size_t)(o->end % o->cap);
		size_t room = ring_free(o);
		if (room > o->cap - at)
			room = o->cap - at;
		ssize_t n = read(o->fd, o->buf + at, room);
		if (n > 0) {
			o->end += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		/* 0: end of file; EIO: a pty whose other side is all closed */
		out_close(p, i);
		return false;
	}
	if (o->fd >= 0 && !ring_free(o))
		ev_io_stop(lm_agent.loop, &o->w);   /* full: until the host acks */
	return o->fd >= 0;
}

static void on_out(struct ev_loop *loop, ev_io *w, int revents)
{
	struct proc *p = w->data;
	(void)loop;
	(void)revents;
	int i = w == &p->out[0].w ? 0 : 1;
	out_read(p, i);
	pump(p);
}

/* Sends one event on the current stream; false if the stream is gone. */
static bool send_event(struct proc *p, Lmshim__Agent__V1__OutputEvent *ev)
{
	int rc = lm_agent_send(p->sub, &ev->base);
	if (rc == 0)
		return true;
	/* cancelled or not draining: the server ended it; give our answer up */
	lm_rpc_call_end(p->sub, LM_RPC_OK, NULL);
	p->sub = NULL;
	return false;
}

/* Sends what the current stream does not have yet. */
static void pump(struct proc *p)
{
	if (!p->sub)
		return;
	for (int i = 0; i < 2; i++) {
		struct outbuf *o = &p->out[i];
		while (o->sent < o->end) {
			size_t at = (size_t)(o->sent % o->cap);
			size_t n = (size_t)(o->end - o->sent);
			if (n > o->cap - at)
				n = o->cap - at;
			if (n > CHUNK)
				n = CHUNK;
			Lmshim__Agent__V1__OutputEvent ev = LMSHIM__AGENT__V1__OUTPUT_EVENT__INIT;
			ev.fd = i == 0 ? LMSHIM__AGENT__V1__FD__FD_STDOUT : LMSHIM__AGENT__V1__FD__FD_STDERR;
			ev.offset = o->sent;
			ev.data.data = o->buf + at;
			ev.data.len = n;
			if (!send_event(p, &ev))
				return;
			o->sent += n;
		}
		if (o->eof && !o->eof_sent) {
			Lmshim__Agent__V1__OutputEvent ev = LMSHIM__AGENT__V1__OUTPUT_EVENT__INIT;
			ev.fd = i == 0 ? LMSHIM__AGENT__V1__FD__FD_STDOUT : LMSHIM__AGENT__V1__FD__FD_STDERR;
			ev.offset = o->end;
			ev.eof = true;
			if (!send_event(p, &ev))
				return;
			o->eof_sent = true;
		}
	}
	if (p->state == P_EXITED && !p->exit_sent) {
		Lmshim__Agent__V1__OutputEvent ev = LMSHIM__AGENT__V1__OUTPUT_EVENT__INIT;
		ev.exited = true;
		ev.exit_status = p->status;
		ev.exited_at_ns = p->exited_at;
		if (!send_event(p, &ev))
			return;
		p->exit_sent = true;
	}
	if (p->exit_sent && p->out[0].eof_sent && p->out[1].eof_sent) {
		lm_rpc_call_end(p->sub, LM_RPC_OK, NULL);
		p->sub = NULL;
	}
}

int lm_agent_proc_io_init(struct proc *p, int out_fd, int err_fd, int in_fd, int pty)
{
	int fds[2] = {out_fd, err_fd};
	p->pty = pty;
	p->in_fd = in_fd;
	for (int i = 0; i < 2; i++) {
		struct outbuf *o = &p->out[i];
		o->fd = fds[i];
		if (o->fd < 0) {
			o->eof = true;                  /* a pty has no stderr */
			continue;
		}
		o->cap = LM_AGENT_OUT_CAP;
		o->buf = malloc(o->cap);
		if (!o->buf)
			return -ENOMEM;
		fcntl(o->fd, F_SETFL, fcntl(o->fd, F_GETFL) | O_NONBLOCK);
		ev_io_init(&o->w, on_out, o->fd, EV_READ);
		o->w.data = p;
		ev_io_start(lm_agent.loop, &o->w);
	}
	if (in_fd >= 0) {
		fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
		p->in_w.data = p;
	}
	return 0;
}

void lm_agent_proc_io_free(struct proc *p)
{
	for (int i = 0; i < 2; i++) {
		out_close(p, i);
		free(p->out[i].buf);
		p->out[i].buf = NULL;
	}
	if (p->in_fd >= 0) {
		ev_io_stop(lm_agent.loop, &p->in_w);
		close(p->in_fd);
		p->in_fd = -1;
	}
	if (p->pty >= 0)
		close(p->pty);
	p->pty = -1;
	free(p->in_buf);
	p->in_buf = NULL;
	lm_agent_proc_end_calls(p, LM_RPC_NOT_FOUND, "the process was deleted");
}

void lm_agent_proc_exited(struct proc *p)
{
	for (int i = 0; i < 2; i++)
		if (p->out[i].fd >= 0)
			out_read(p, i);                 /* what it wrote before it died */
	struct waiter *w = p->waiters;
	p->waiters = NULL;
	while (w) {
		struct waiter *next = w->next;
		Lmshim__Agent__V1__WaitResponse r = LMSHIM__AGENT__V1__WAIT_RESPONSE__INIT;
		r.exit_status = p->status;
		r.exited_at_ns = p->exited_at;
		r.pid = (uint32_t)p->pid;
		lm_agent_reply(w->call, &r.base);
		free(w);
		w = next;
	}
	pump(p);
}

void lm_agent_proc_end_calls(struct proc *p, int code, const char *msg)
{
	while (p->waiters) {
		struct waiter *w = p->waiters;
		p->waiters = w->next;
		lm_rpc_call_fail(w->call, code, "%s", msg);
		free(w);
	}
	if (p->sub) {
		lm_rpc_call_end(p->sub, code, msg);
		p->sub = NULL;
	}
}

void lm_agent_forget_call(lm_rpc_call_t *call)
{
	for (struct container *c = lm_agent.containers; c; c = c->next)
		for (struct proc *p = c->procs; p; p = p->next) {
			if (p->sub == call) {
				lm_rpc_call_end(call, LM_RPC_CANCELED, "cancelled");   /* dropped */
				p->sub = NULL;
				return;
			}
			for (struct waiter **pw = &p->waiters; *pw; pw = &(*pw)->next)
				if ((*pw)->call == call) {
					struct waiter *w = *pw;
					*pw = w->next;
					lm_rpc_call_fail(call, LM_RPC_CANCELED, "cancelled");
					free(w);
					return;
				}
		}
}

void lm_agent_wait(lm_rpc_call_t *call, struct proc *p)
{
	if (p->state == P_EXITED) {
		Lmshim__Agent__V1__WaitResponse r = LMSHIM__AGENT__V1__WAIT_RESPONSE__INIT;
		r.exit_status = p->status;
		r.exited_at_ns = p->exited_at;
		r.pid = (uint32_t)p->pid;
		lm_agent_reply(call, &r.base);
		return;
	}
	struct waiter *w = calloc(1, sizeof(*w));
	if (!w) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	w->call = call;
	w->next = p->waiters;
	p->waiters = w;
}

void lm_agent_output(lm_rpc_call_t *call, struct proc *p, uint64_t out_off, uint64_t err_off,
		     bool from_acknowledged)
{
	uint64_t offs[2] = {out_off, err_off};
	for (int i = 0; i < 2; i++) {
		struct outbuf *o = &p->out[i];
		if (from_acknowledged && offs[i] < o->base)
			offs[i] = o->base;
		if (offs[i] > o->end || offs[i] < o->base) {
			lm_rpc_call_end(call, LM_RPC_OUT_OF_RANGE,
					offs[i] > o->end ? "Output: offset past the output produced so far"
							 : "Output: offset before the acknowledged output");
			return;
		}
	}
	if (p->sub)
		lm_rpc_call_end(p->sub, LM_RPC_ABORTED, "replaced by a newer Output call");
	p->sub = call;
	p->exit_sent = false;
	for (int i = 0; i < 2; i++) {
		p->out[i].sent = offs[i];
		p->out[i].eof_sent = false;
	}
	if (p == p->c->init)
		lm_agent_proc_oom(p, p->c->oom_kills);   /* first: the count so far */
	pump(p);
}

void lm_agent_proc_oom(struct proc *p, uint64_t oom_kills)
{
	if (!p->sub)
		return;
	Lmshim__Agent__V1__OutputEvent ev = LMSHIM__AGENT__V1__OUTPUT_EVENT__INIT;
	ev.oom_kills = oom_kills;
	ev.oom_count = true;
	(void)send_event(p, &ev);
}

void lm_agent_ack(lm_rpc_call_t *call, struct proc *p, uint64_t out_off, uint64_t err_off)
{
	uint64_t offs[2] = {out_off, err_off};
	for (int i = 0; i < 2; i++) {
		struct outbuf *o = &p->out[i];
		if (offs[i] > o->end) {
			lm_rpc_call_fail(call, LM_RPC_OUT_OF_RANGE,
					 "AckOutput: %s offset %llu is past the %llu bytes produced",
					 i ? "stderr" : "stdout", (unsigned long long)offs[i],
					 (unsigned long long)o->end);
			return;
		}
	}
	for (int i = 0; i < 2; i++) {
		struct outbuf *o = &p->out[i];
		if (offs[i] <= o->base)
			continue;
		bool was_full = !ring_free(o);
		o->base = offs[i];
		if (o->sent < o->base)
			o->sent = o->base;
		if (was_full && o->fd >= 0) {
			ev_io_start(lm_agent.loop, &o->w);
			out_read(p, i);
		}
	}
	pump(p);
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	lm_agent_reply(call, &e.base);
}

/* ---- stdin ------------------------------------------------------------ */

static void in_close_now(struct proc *p)
{
	if (p->in_fd < 0)
		return;
	ev_io_stop(lm_agent.loop, &p->in_w);
	if (p->pty >= 0) {
		/* a pty: the line discipline's EOF character ends the input */
		struct termios t;
		char eof = tcgetattr(p->pty, &t) == 0 ? (char)t.c_cc[VEOF] : 4;
		ssize_t w = write(p->in_fd, &eof, 1);
		(void)w;
	}
	close(p->in_fd);
	p->in_fd = -1;
}

/* Writes held stdin bytes; watches for room while some are left. */
static void in_flush(struct proc *p)
{
	while (p->in_fd >= 0 && p->in_len) {
		ssize_t n = write(p->in_fd, p->in_buf, p->in_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (!ev_is_active(&p->in_w))
					ev_io_start(lm_agent.loop, &p->in_w);
				return;
			}
			/* the reader is gone (EPIPE): what is held is lost with it */
			p->in_len = 0;
			in_close_now(p);
			return;
		}
		memmove(p->in_buf, p->in_buf + n, p->in_len - (size_t)n);
		p->in_len -= (size_t)n;
	}
	if (p->in_fd >= 0 && ev_is_active(&p->in_w))
		ev_io_stop(lm_agent.loop, &p->in_w);
	if (p->in_close)
		in_close_now(p);
}

static void on_in(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	in_flush(w->data);
}

void lm_agent_stdin(lm_rpc_call_t *call, struct proc *p, uint64_t off, const uint8_t *d, size_t n)
{
	Lmshim__Agent__V1__WriteStdinResponse r = LMSHIM__AGENT__V1__WRITE_STDIN_RESPONSE__INIT;
	if (p->in_fd < 0 && !p->in_close && p->pty < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "WriteStdin: container %s: process %s has no stdin (open_stdin was false)",
				 p->c->id, p->exec_id[0] ? p->exec_id : "(init)");
		return;
	}
	if (p->in_close || p->in_fd < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "WriteStdin: stdin is closed");
		return;
	}
	if (off > p->in_off) {
		lm_rpc_call_fail(call, LM_RPC_OUT_OF_RANGE,
				 "WriteStdin: offset %llu leaves a gap after the %llu bytes taken",
				 (unsigned long long)off, (unsigned long long)p->in_off);
		return;
	}
	uint64_t skip = p->in_off - off;          /* taken before: a retry */
	if (skip < n) {
		size_t take = n - (size_t)skip;
		if (!p->in_buf && !(p->in_buf = malloc(LM_AGENT_IN_CAP))) {
			lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
			return;
		}
		if (take > LM_AGENT_IN_CAP - p->in_len)
			take = LM_AGENT_IN_CAP - p->in_len;
		memcpy(p->in_buf + p->in_len, d + skip, take);
		p->in_len += take;
		p->in_off += take;
		if (!p->in_w.cb)
			ev_io_init(&p->in_w, on_in, p->in_fd, EV_WRITE);
		p->in_w.data = p;
		in_flush(p);
	}
	r.offset = p->in_off;
	r.room = LM_AGENT_IN_CAP - p->in_len;
	r.room_known = true;
	lm_agent_reply(call, &r.base);
}

void lm_agent_close_stdin(lm_rpc_call_t *call, struct proc *p)
{
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	if (p->in_fd >= 0 && !p->in_close) {
		p->in_close = true;
		if (!p->in_w.cb)
			ev_io_init(&p->in_w, on_in, p->in_fd, EV_WRITE);
		p->in_w.data = p;
		in_flush(p);
	}
	lm_agent_reply(call, &e.base);
}

void lm_agent_resize(lm_rpc_call_t *call, struct proc *p, uint32_t w, uint32_t h)
{
	if (p->pty < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "ResizePty: container %s: process %s has no terminal", p->c->id,
				 p->exec_id[0] ? p->exec_id : "(init)");
		return;
	}
	struct winsize ws = {.ws_row = (unsigned short)h, .ws_col = (unsigned short)w};
	if (ioctl(p->pty, TIOCSWINSZ, &ws) < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "ResizePty: %s", strerror(errno));
		return;
	}
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	lm_agent_reply(call, &e.base);
}
