/*
 * ctl_recover.c: `lmctl recover`, which settles a migration session that
 * its orchestrator left behind, for example after `lmctl migrate` was
 * killed, or after the link between the shims broke during the handover.
 *
 * It asks both shims where the session stands (lmshim.v1.Recovery/State),
 * then takes the one step that puts the guest on exactly one side, by the
 * handover's rules (hcs/PROTOCOL.md, "Handover"):
 *   - the destination runs the guest, or holds the source's grant: it
 *     runs it; the source stops its paused copy;
 *   - the source still holds the guest (never gave it away), or kept it,
 *     or the destination gave it up: the destination discards its copy
 *     and the source resumes;
 *   - in doubt (the source gave the guest away and the destination never
 *     heard it): the source's grant secret is carried to the destination,
 *     which then runs the guest; or, when the destination gave it up, its
 *     release secret is carried to the source, which resumes;
 *   - a shim that does not answer: only an operator's explicit word that
 *     its host is gone (--force-source-gone / --force-destination-gone)
 *     lets the other run the guest without its peer's word.
 * Then Cleanup on both. It prints what it found and what it did, and is
 * idempotent: run again, it finds idle shims and says so.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/ctl.h"

#define RECOVERY "lmshim.v1.Recovery"

/* What one shim says of the session. */
struct view {
	bool reached;                 /* the shim answered */
	char state[32];               /* its controller state ("Idle": no session) */
	char side[16];
	char ho[16];                  /* handover state */
	char link[16];
	bool in_doubt;
	bool vm_running;
	char secret[80];              /* hex, when it may be carried */
	char why[200];
};

static void look(struct ctl_side *s, const char *session, int64_t tmo, struct view *v)
{
	memset(v, 0, sizeof(*v));
	char req[400], *out = NULL;
	snprintf(req, sizeof(req), "{\"SessionId\":\"%s\"}", session);
	if (ctl_call_json(s, RECOVERY, "State", req, tmo, false, &out, NULL, 0) != 0)
		return;
	json_t *j = json_loads(out, 0, NULL);
	free(out);
	if (!j)
		return;
	v->reached = true;
	json_t *h = json_object_get(j, "Handover");
	snprintf(v->state, sizeof(v->state), "%s", json_string_value(json_object_get(j, "State")) ?: "?");
	snprintf(v->side, sizeof(v->side), "%s", json_string_value(json_object_get(j, "Side")) ?: "?");
	snprintf(v->ho, sizeof(v->ho), "%s", json_string_value(json_object_get(h, "State")) ?: "none");
	snprintf(v->link, sizeof(v->link), "%s", json_string_value(json_object_get(h, "Link")) ?: "-");
	snprintf(v->secret, sizeof(v->secret), "%s", json_string_value(json_object_get(h, "Secret")) ?: "");
	snprintf(v->why, sizeof(v->why), "%s", json_string_value(json_object_get(h, "Why")) ?: "");
	v->in_doubt = json_is_true(json_object_get(h, "InDoubt"));
	v->vm_running = json_is_true(json_object_get(j, "VmRunning"));
	json_decref(j);
}

static void show(const char *name, const struct ctl_side *s, const struct view *v)
{
	if (!v->reached) {
		printf("%-12s %s: does not answer\n", name, s->path);
		return;
	}
	printf("%-12s %s: session %s, handover %s, link %s%s%s\n", name, s->path, v->state, v->ho, v->link,
	       v->vm_running ? ", guest running" : "", v->in_doubt ? ", IN DOUBT" : "");
	if (v->why[0] && strcmp(v->state, "Idle"))
		printf("%-12s   (%s)\n", "", v->why);
}

static bool idle(const struct view *v)
{
	return v->reached && (!strcmp(v->state, "Idle") || !strcmp(v->state, "OtherSession"));
}

static int act(struct ctl_side *s, const char *session, const char *action, const char *secret,
	       int64_t tmo)
{
	char req[400], *out = NULL, msg[400];
	if (secret && *secret)
		snprintf(req, sizeof(req), "{\"SessionId\":\"%s\",\"Action\":\"%s\",\"Secret\":\"%s\"}",
			 session, action, secret);
	else
		snprintf(req, sizeof(req), "{\"SessionId\":\"%s\",\"Action\":\"%s\"}", session, action);
	printf("do: %s on the %s\n", action, s->name);
	int rc = ctl_call_json(s, RECOVERY, "Act", req, tmo, false, &out, msg, sizeof(msg));
	free(out);
	return rc;
}

static int mig(struct ctl_side *s, const char *method, const char *session, int action, int64_t tmo)
{
	if (!strcmp(method, "FinalizeSandbox")) {
		FinalizeSandboxRequest f = FINALIZE_SANDBOX_REQUEST__INIT;
		f.session_id = (char *)session;
		f.action = action;
		printf("do: FinalizeSandbox %s on the %s\n",
		       action == FINALIZE_ACTION__FINALIZE_ACTION_STOP ? "STOP" : "RESUME", s->name);
		return ctl_call(s, CTL_MIGRATION_SERVICE, method, &f.base, NULL, NULL, tmo, false, NULL, 0);
	}
	CancelRequest c = CANCEL_REQUEST__INIT;
	c.session_id = (char *)session;
	printf("do: %s on the %s\n", method, s->name);
	return ctl_call(s, CTL_MIGRATION_SERVICE, method, &c.base, NULL, NULL, tmo, false, NULL, 0);
}

/* The guest runs on the destination: the source's copy goes. */
static int forward(struct ctl_side *src, struct ctl_side *dst, const struct view *vs, const char *session,
		   int64_t tmo, bool force_src_gone)
{
	if (vs->reached && !idle(vs) && strcmp(vs->state, "Finalized")) {
		int rc = mig(src, "FinalizeSandbox", session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo);
		if (rc != 0 && (!strcmp(vs->ho, "granted") || !strcmp(vs->ho, "committed")))
			rc = act(src, session, "Stop", NULL, tmo);   /* the link broke: the orchestrator saw it run */
		if (rc != 0)
			return 3;
	} else if (!vs->reached && !force_src_gone) {
		printf("note: the source does not answer: its paused copy stays until it does (run again)\n");
	}
	mig(dst, "Cleanup", session, 0, tmo);
	if (vs->reached && !idle(vs))
		mig(src, "Cleanup", session, 0, tmo);
	return 0;
}

/* The guest stays on (goes back to) the source: the destination's copy goes. */
static int backward(struct ctl_side *src, struct ctl_side *dst, const struct view *vd, const char *session,
		    int64_t tmo)
{
	if (vd->reached && !idle(vd)) {
		mig(dst, "Cancel", session, 0, tmo);
		mig(dst, "FinalizeSandbox", session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo);
	}
	mig(src, "Cancel", session, 0, tmo);
	if (mig(src, "FinalizeSandbox", session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo) != 0)
		return 3;
	mig(src, "Cleanup", session, 0, tmo);
	if (vd->reached && !idle(vd))
		mig(dst, "Cleanup", session, 0, tmo);
	return 0;
}

int ctl_recover(const struct ctl_recover_opts *o)
{
	struct ctl_side src = { .name = "source", .path = o->from };
	struct ctl_side dst = { .name = "destination", .path = o->to };
	int64_t tmo = o->call_timeout_ns;
	struct view vs, vd;
	ctl_side_connect(&src, 0);
	ctl_side_connect(&dst, 0);
	look(&src, o->session, tmo, &vs);
	look(&dst, o->session, tmo, &vd);
	printf("session %s\n", o->session);
	show("source", &src, &vs);
	show("destination", &dst, &vd);
	int rc = 0;

	bool dst_has = vd.reached && (!strcmp(vd.ho, "committed") || !strcmp(vd.ho, "granted"));
	bool src_gave = vs.reached && (!strcmp(vs.ho, "granted") || !strcmp(vs.ho, "committed"));
	bool dst_gave_up = vd.reached && (!strcmp(vd.ho, "released") || !strcmp(vd.ho, "revoked"));

	if ((idle(&vs) || !vs.reached) && (idle(&vd) || !vd.reached) && (vs.reached || vd.reached)) {
		printf("nothing to do: no session %s on %s\n", o->session,
		       vs.reached && vd.reached ? "either shim" : "the shim that answers");
		if (!vs.reached || !vd.reached)
			rc = !vs.reached && !vd.reached ? 1 : 0;
	} else if (!vs.reached && !vd.reached) {
		fprintf(stderr, "lmctl: neither shim answers: nothing can be settled now\n");
		rc = 1;
	} else if (dst_has) {
		printf("the guest is the destination's: it runs there, the source's copy goes\n");
		if (!strcmp(vd.ho, "granted") || strcmp(vd.state, "Finalized"))
			if (mig(&dst, "FinalizeSandbox", o->session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo) != 0)
				rc = 3;
		if (rc == 0)
			rc = forward(&src, &dst, &vs, o->session, tmo, o->force_source_gone);
	} else if (src_gave && vd.reached && !dst_gave_up) {
		printf("in doubt: the source gave the guest away, the destination never heard it: "
		       "carrying the source's grant to the destination\n");
		if (!vs.secret[0] || act(&dst, o->session, "Commit", vs.secret, tmo) != 0)
			rc = 3;
		else
			rc = forward(&src, &dst, &vs, o->session, tmo, false);
	} else if (src_gave && dst_gave_up) {
		printf("the destination gave the guest up after the source gave it away: "
		       "carrying the destination's release to the source\n");
		if (!vd.secret[0] || act(&src, o->session, "Resume", vd.secret, tmo) != 0)
			rc = 3;
		else
			rc = backward(&src, &dst, &vd, o->session, tmo);
	} else if (src_gave && !vd.reached) {
		if (!o->force_destination_gone) {
			fprintf(stderr, "lmctl: the source gave the guest to a destination that does not answer: "
				"nothing runs it. When the destination answers, run this again; if its host is\n"
				"lmctl: gone for good, run it with --force-destination-gone\n");
			rc = 3;
		} else if (act(&src, o->session, "ForceResume", NULL, tmo) != 0) {
			rc = 3;
		} else {
			mig(&src, "Cleanup", o->session, 0, tmo);
		}
	} else if (!vs.reached) {
		/* the source holds the guest (or would): its silence leaves the
		 * destination unable to know */
		if (!o->force_source_gone) {
			fprintf(stderr, "lmctl: the source does not answer: the destination cannot know whether it "
				"kept the guest. When the source answers, run this again; if its host is\n"
				"lmctl: gone for good, run it with --force-source-gone\n");
			rc = 3;
		} else if (!strcmp(vd.state, "TransferCompleted")) {
			/* a complete copy: it runs, unless the destination knows
			 * better (a source that still answers over the link) */
			if (act(&dst, o->session, "ForceCommit", NULL, tmo) == 0)
				mig(&dst, "Cleanup", o->session, 0, tmo);
			else
				rc = 3;
		} else {
			fprintf(stderr, "lmctl: the destination holds no complete copy of the guest: it is lost "
				"with the source\n");
			mig(&dst, "Cancel", o->session, 0, tmo);
			mig(&dst, "FinalizeSandbox", o->session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo);
			mig(&dst, "Cleanup", o->session, 0, tmo);
			rc = 1;
		}
	} else {
		printf("the guest is the source's: the destination's copy goes, the source runs it\n");
		rc = backward(&src, &dst, &vd, o->session, tmo);
	}

	if (rc != 1) {
		look(&src, o->session, tmo, &vs);
		look(&dst, o->session, tmo, &vd);
		printf("now:\n");
		show("source", &src, &vs);
		show("destination", &dst, &vd);
	}
	if (rc == 3)
		fprintf(stderr, "lmctl: not settled yet (see above)\n");
	ctl_side_close(&src);
	ctl_side_close(&dst);
	return rc;
}
