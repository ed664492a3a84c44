/*
 * lmctl.c: the operator CLI of lmshim. Subcommands:
 *
 *   lmctl migrate --from SOCK --to SOCK [options]   live-migrate a sandbox
 *   lmctl watch   --shim SOCK --session ID          stream notifications
 *   lmctl state   --shim SOCK [--id ID]             task State
 *   lmctl cancel  --shim SOCK --session ID          Cancel a migration
 *   lmctl inspect --shim SOCK                       the compute system's properties
 *   lmctl recover --session ID --from SOCK --to SOCK settle a session left behind
 *   lmctl demo    [--backend sim|kvm] ...           the README's main job
 *
 * Every subcommand has --help; bad flags print a clear message and exit
 * 2; errors name the call, the side and the cause and exit 1. The work is
 * in ctl_migrate.c, ctl_recover.c, ctl_demo.c and ctl_common.c (ctl.h).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "util/fault.h"
#include "cmd/ctl.h"

/* A shim's socket as given: a path, or containerd's unix://PATH (what
 * `lmshim start` prints and writes to its address file). */
static const char *sock_path(const char *arg)
{
	return strncmp(arg, "unix://", 7) ? arg : arg + 7;
}

static const char usage_main[] =
	"usage: lmctl COMMAND [options]\n"
	"\n"
	"Drive live migrations between lmshim shims over their ttrpc sockets.\n"
	"\n"
	"commands:\n"
	"  migrate   live-migrate the sandbox of one shim to another\n"
	"  watch     print a migration's notifications, one line each\n"
	"  state     print a container's task state\n"
	"  cancel    cancel the migration of a shim\n"
	"  recover   settle a migration whose orchestrator died or whose handover is in doubt\n"
	"  inspect   print the shim's VM properties (memory digest, workload statistics)\n"
	"  demo      start two shims and migrate a running 1 GiB VM between them\n"
	"\n"
	"'lmctl COMMAND --help' describes each command.\n";

static const char usage_migrate[] =
	"usage: lmctl migrate --from SOCK --to SOCK [options]\n"
	"\n"
	"Runs the whole Migration sequence: export on the source, import and one task\n"
	"Create per container on the destination, prepare, notifications, the migration\n"
	"socket, transfer, finalize (the destination RESUMEs, then the source STOPs),\n"
	"cleanup. On a failure the destination gives the guest up and the source resumes\n"
	"it (its shim refuses if it gave the guest away: then the migration is finished\n"
	"forward); when neither can be made sure, lmctl says where the guest is and how\n"
	"to settle it (lmctl recover). Ctrl-C cancels and rolls back within 2 s; a second\n"
	"Ctrl-C quits at once (the shims then settle the session themselves).\n"
	"\n"
	"  --from SOCK                 the source shim's ttrpc socket (a path or unix://PATH)\n"
	"  --to SOCK                   the destination shim's ttrpc socket\n"
	"  --session ID                session ID (default: a random UUID)\n"
	"  --transport unix|tcp|dup    how the shims get the migration socket (default unix)\n"
	"  --listen ADDR               the destination listens here: tcp host:port (default\n"
	"                              127.0.0.1 and a free port), unix a path (default in --workdir)\n"
	"  --connect ADDR              the source dials this (default: --listen), e.g. a relay\n"
	"  --workdir DIR               where the new bundles are written: a folder only you can write\n"
	"                              (default: a fresh private $TMPDIR/lmctl-SESSION-XXXXXX);\n"
	"                              the destination keeps using them: leave them in place\n"
	"  --sandbox-id ID             ImportSandbox's sandbox_id (default: the sandbox container's new ID)\n"
	"  --id-suffix S               new container ID = source ID + S (default \"-m\")\n"
	"  --layer-map FROM=TO         a source layer under FROM is under TO on the destination\n"
	"                              (repeatable; default: the same path, when it exists here;\n"
	"                              a layer that does not is an empty folder in the bundle)\n"
	"  --container SRC[=NEW][:sandbox|:container][:layers=N]\n"
	"                              name a container to patch (default: read the snapshot)\n"
	"  --checksum                  ask for checksum verification of every batch (lmshim\n"
	"                              checksums them anyway unless started with --no-checksum)\n"
	"  --compression-workers N     LZ4 compression with N workers\n"
	"  --max-passes N              maximum brownout passes\n"
	"  --target-passes N           target brownout passes\n"
	"  --target-blackout-ms N      target blackout time\n"
	"  --blackout-cancel-ms N      cancel if the blackout would exceed N ms\n"
	"  --throttling-scale X        throttle step, 1..100\n"
	"  --no-throttle               skip throttling\n"
	"  --no-verify                 skip the verification (by default the memory digest and the\n"
	"                              workload checksum of both sides are compared after the\n"
	"                              transfer, through lmshim.v1.Inspect; a shim without it is\n"
	"                              reported as unverified, not as a failure)\n"
	"  --verify                    require the verification (fail if unavailable)\n"
	"  --timeout DUR               TransferSandbox timeout (e.g. 90s, 10m)\n"
	"  --src-containerd ADDR       after the migration, the source's containerd deletes the\n"
	"                              migrated tasks and containers (the shim ended them)\n"
	"  --dst-containerd ADDR       after the migration, the destination's containerd takes them\n"
	"                              over: each is created there from the source's image under its\n"
	"                              new ID and its task adopted (ctr tasks start) as it runs;\n"
	"                              --to must then be the shim containerd would start for the pod\n"
	"                              (lmshim -namespace NS -address ADDR -id NEW-ID start prints it)\n"
	"  --containerd-namespace NS   containerd namespace (default \"default\")\n"
	"  --ctr PATH                  containerd's CLI (default \"ctr\" in PATH)\n"
	"  --containerd-runtime NAME   lmshim's runtime name (default io.containerd.lmshim.v1)\n"
	"  --call-timeout DUR          deadline of each other call (default 10s); a shim that\n"
	"                              misses one is not called again\n"
	"  --quiet                     no progress bar\n"
	"  --help                      this text\n"
	"\n"
	"On success stdout has one line per container: SOURCE-ID NEW-ID INIT-PID.\n"
	"Exit status: 0 migrated, 1 failed (the guest runs on one side: said which),\n"
	"2 bad usage, 3 failed and not settled (run lmctl recover), 4 migrated but a\n"
	"containerd was not told all of it (each failed step said; the guest runs on the\n"
	"destination).\n";

static const char usage_recover[] =
	"usage: lmctl recover --session ID --from SOCK --to SOCK [options]\n"
	"\n"
	"Settles a migration session left behind (lmctl migrate killed, the shims' link\n"
	"broken during the handover): asks both shims where it stands, puts the guest on\n"
	"exactly one side by the handover's rules (the destination runs it only with the\n"
	"source's grant; the source runs it again only if it never gave it away, or the\n"
	"destination gave it up), carries a shim's secret to the other when the link broke,\n"
	"then cleans both up. Prints what it found and did; running it again is harmless.\n"
	"\n"
	"  --session ID                 the migration's session ID\n"
	"  --from SOCK                  the source shim's ttrpc socket\n"
	"  --to SOCK                    the destination shim's ttrpc socket\n"
	"  --force-source-gone          the source's host is gone for good: let the destination\n"
	"                               run the guest without the source's word (never a guess:\n"
	"                               if the source still runs it, two copies would run)\n"
	"  --force-destination-gone     the destination's host is gone for good: let the source\n"
	"                               run the guest again after it gave it away\n"
	"  --call-timeout DUR           deadline of each call (default 10s)\n"
	"  --help                       this text\n"
	"\n"
	"Exit status: 0 settled (or nothing to do), 1 failed, 2 bad usage, 3 not settled yet.\n";

static const char usage_watch[] =
	"usage: lmctl watch --shim SOCK --session ID\n"
	"\n"
	"Subscribes to the shim's Notifications for the session and prints one line\n"
	"per notification until the stream ends (Cleanup) or the connection goes.\n";

static const char usage_state[] =
	"usage: lmctl state --shim SOCK --id ID\n"
	"\n"
	"Prints the task State of container ID (lmctl inspect shows the VM).\n";

static const char usage_inspect[] =
	"usage: lmctl inspect --shim SOCK\n"
	"\n"
	"Prints the compute system's properties as JSON (lmshim.v1.Inspect/Properties\n"
	"with the MemoryDigest property: XXH3-64 of guest memory, and the workload's\n"
	"statistics and checksum).\n";

static const char usage_cancel[] =
	"usage: lmctl cancel --shim SOCK --session ID\n"
	"\n"
	"Cancels the migration of the session on that shim.\n";

static int bad_flag(const char *cmd, const char *what)
{
	fprintf(stderr, "lmctl %s: %s (see 'lmctl %s --help')\n", cmd, what, cmd);
	return 2;
}

static bool parse_u32(const char *s, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > UINT32_MAX || s[0] == '-')
		return false;
	*out = (uint32_t)v;
	return true;
}

/* SRC[=NEW][:sandbox|:container][:layers=N] */
static int parse_container(const char *arg, struct ctl_container *c)
{
	char *s = strdup(arg);
	if (!s)
		return -1;
	memset(c, 0, sizeof(*c));
	char *save = NULL;
	char *first = strtok_r(s, ":", &save);
	if (!first || !*first) {
		free(s);
		return -1;
	}
	char *eq = strchr(first, '=');
	if (eq) {
		*eq = 0;
		c->new_id = strdup(eq + 1);
	}
	c->src_id = strdup(first);
	c->pod_id = strdup("");
	for (char *t = strtok_r(NULL, ":", &save); t; t = strtok_r(NULL, ":", &save)) {
		if (!strcmp(t, "sandbox")) {
			c->is_sandbox = true;
			c->type_known = 1;
		} else if (!strcmp(t, "container")) {
			c->is_sandbox = false;
			c->type_known = 1;
		} else if (!strncmp(t, "layers=", 7)) {
			uint32_t v;
			if (!parse_u32(t + 7, &v)) {
				free(s);
				return -1;
			}
			c->layers = v;
		} else {
			free(s);
			return -1;
		}
	}
	free(s);
	return 0;
}

static MemoryTransferThrottleParams *throttle(InitializeOptions *io)
{
	if (!io->memory_transfer_throttle_params) {
		static MemoryTransferThrottleParams t = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
		io->memory_transfer_throttle_params = &t;
	}
	return io->memory_transfer_throttle_params;
}

static int cmd_migrate(int argc, char **argv)
{
	enum {
		O_FROM = 1, O_TO, O_SESSION, O_TRANSPORT, O_LISTEN, O_CONNECT, O_WORKDIR, O_SANDBOX_ID,
		O_SUFFIX, O_LAYERMAP, O_CONTAINER, O_CHECKSUM, O_COMPRESS, O_MAXP, O_TARGETP, O_TBLACK, O_CBLACK,
		O_SCALE, O_NOTHROTTLE, O_VERIFY, O_NOVERIFY, O_TIMEOUT, O_CTIMEOUT, O_QUIET, O_HELP,
		O_SRC_CD, O_DST_CD, O_CD_NS, O_CTR, O_CD_RUNTIME,
	};
	static const struct option lo[] = {
		{ "from", required_argument, 0, O_FROM }, { "to", required_argument, 0, O_TO },
		{ "session", required_argument, 0, O_SESSION },
		{ "transport", required_argument, 0, O_TRANSPORT },
		{ "listen", required_argument, 0, O_LISTEN }, { "connect", required_argument, 0, O_CONNECT },
		{ "workdir", required_argument, 0, O_WORKDIR },
		{ "sandbox-id", required_argument, 0, O_SANDBOX_ID },
		{ "id-suffix", required_argument, 0, O_SUFFIX },
		{ "layer-map", required_argument, 0, O_LAYERMAP },
		{ "container", required_argument, 0, O_CONTAINER },
		{ "checksum", no_argument, 0, O_CHECKSUM },
		{ "compression-workers", required_argument, 0, O_COMPRESS },
		{ "max-passes", required_argument, 0, O_MAXP },
		{ "target-passes", required_argument, 0, O_TARGETP },
		{ "target-blackout-ms", required_argument, 0, O_TBLACK },
		{ "blackout-cancel-ms", required_argument, 0, O_CBLACK },
		{ "throttling-scale", required_argument, 0, O_SCALE },
		{ "no-throttle", no_argument, 0, O_NOTHROTTLE },
		{ "verify", no_argument, 0, O_VERIFY },
		{ "no-verify", no_argument, 0, O_NOVERIFY },
		{ "timeout", required_argument, 0, O_TIMEOUT },
		{ "call-timeout", required_argument, 0, O_CTIMEOUT },
		{ "quiet", no_argument, 0, O_QUIET }, { "help", no_argument, 0, O_HELP },
		{ "src-containerd", required_argument, 0, O_SRC_CD },
		{ "dst-containerd", required_argument, 0, O_DST_CD },
		{ "containerd-namespace", required_argument, 0, O_CD_NS },
		{ "ctr", required_argument, 0, O_CTR },
		{ "containerd-runtime", required_argument, 0, O_CD_RUNTIME },
		{ 0, 0, 0, 0 },
	};
	struct ctl_containerd_opts cd = { .ns = "default", .ctr = "ctr", .runtime = "io.containerd.lmshim.v1" };
	struct ctl_migrate_opts o = { .id_suffix = "-m", .transport = "unix", .verify = true,
				      .call_timeout_ns = 10ll * 1000000000 };
	InitializeOptions io = INITIALIZE_OPTIONS__INIT;
	CompressionSettings cs = COMPRESSION_SETTINGS__INIT;
	io.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
	struct ctl_container *conts = NULL;
	size_t ncont = 0;
	const char *lmap[16];
	size_t n_lmap = 0;
	uint32_t u;
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case O_FROM: o.from = sock_path(optarg); break;
		case O_TO: o.to = sock_path(optarg); break;
		case O_SESSION:
			if (!*optarg)
				return bad_flag("migrate", "--session must not be empty");
			o.session = optarg;
			break;
		case O_TRANSPORT:
			if (strcmp(optarg, "unix") && strcmp(optarg, "tcp") && strcmp(optarg, "dup"))
				return bad_flag("migrate", "--transport must be unix, tcp or dup");
			o.transport = optarg;
			break;
		case O_LISTEN: o.listen = optarg; break;
		case O_CONNECT: o.connect = optarg; break;
		case O_WORKDIR: o.workdir = optarg; break;
		case O_SANDBOX_ID: o.sandbox_id = optarg; break;
		case O_SUFFIX: o.id_suffix = optarg; break;
		case O_LAYERMAP: {
			const char *eq = strchr(optarg, '=');
			if (!eq || optarg[0] != '/' || eq[1] != '/')
				return bad_flag("migrate", "--layer-map wants FROM=TO, two absolute paths");
			if (n_lmap == sizeof(lmap) / sizeof(lmap[0]))
				return bad_flag("migrate", "--layer-map: at most 16");
			lmap[n_lmap++] = optarg;
			o.layer_map = lmap;
			o.n_layer_map = n_lmap;
			break;
		}
		case O_CONTAINER: {
			struct ctl_container *n = realloc(conts, (ncont + 1) * sizeof(*conts));
			if (!n)
				return 1;
			conts = n;
			if (parse_container(optarg, &conts[ncont]) < 0)
				return bad_flag("migrate", "--container wants SRC[=NEW][:sandbox|:container][:layers=N]");
			ncont++;
			break;
		}
		case O_CHECKSUM: io.checksum_verification = true; break;
		case O_COMPRESS:
			if (!parse_u32(optarg, &u))
				return bad_flag("migrate", "--compression-workers wants a number");
			cs._throttle_worker_count_case = COMPRESSION_SETTINGS___THROTTLE_WORKER_COUNT_THROTTLE_WORKER_COUNT;
			cs.throttle_worker_count = u;
			io.compression_settings = &cs;
			break;
		case O_MAXP:
			if (!parse_u32(optarg, &u))
				return bad_flag("migrate", "--max-passes wants a number");
			throttle(&io)->_maximum_number_of_brownout_transfer_passes_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
			throttle(&io)->maximum_number_of_brownout_transfer_passes = u;
			break;
		case O_TARGETP:
			if (!parse_u32(optarg, &u))
				return bad_flag("migrate", "--target-passes wants a number");
			throttle(&io)->_target_number_of_brownout_transfer_passes_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
			throttle(&io)->target_number_of_brownout_transfer_passes = u;
			break;
		case O_TBLACK:
			if (!parse_u32(optarg, &u))
				return bad_flag("migrate", "--target-blackout-ms wants a number");
			throttle(&io)->_target_blackout_transfer_time_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___TARGET_BLACKOUT_TRANSFER_TIME_TARGET_BLACKOUT_TRANSFER_TIME;
			throttle(&io)->target_blackout_transfer_time = u;
			break;
		case O_CBLACK:
			if (!parse_u32(optarg, &u))
				return bad_flag("migrate", "--blackout-cancel-ms wants a number");
			throttle(&io)->_blackout_time_threshold_for_cancelling_migration_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION_BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION;
			throttle(&io)->blackout_time_threshold_for_cancelling_migration = u;
			io.cancel_if_blackout_threshold_exceeds = true;
			break;
		case O_SCALE: {
			char *end;
			double v = strtod(optarg, &end);
			if (end == optarg || *end)
				return bad_flag("migrate", "--throttling-scale wants a number (1..100)");
			throttle(&io)->_throttling_scale_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE_THROTTLING_SCALE;
			throttle(&io)->throttling_scale = v;
			break;
		}
		case O_NOTHROTTLE:
			throttle(&io)->_skip_throttling_case =
				MEMORY_TRANSFER_THROTTLE_PARAMS___SKIP_THROTTLING_SKIP_THROTTLING;
			throttle(&io)->skip_throttling = true;
			break;
		case O_VERIFY: o.verify = true; o.require_verify = true; break;
		case O_NOVERIFY: o.verify = false; o.require_verify = false; break;
		case O_TIMEOUT:
			if ((o.transfer_timeout_ns = ctl_parse_duration(optarg)) < 0)
				return bad_flag("migrate", "--timeout wants a duration (500ms, 90s, 10m)");
			break;
		case O_CTIMEOUT:
			if ((o.call_timeout_ns = ctl_parse_duration(optarg)) < 0)
				return bad_flag("migrate", "--call-timeout wants a duration (500ms, 90s, 10m)");
			break;
		case O_QUIET: o.quiet_progress = true; break;
		case O_SRC_CD: cd.src_addr = optarg; break;
		case O_DST_CD: cd.dst_addr = optarg; break;
		case O_CD_NS: cd.ns = optarg; break;
		case O_CTR: cd.ctr = optarg; break;
		case O_CD_RUNTIME: cd.runtime = optarg; break;
		case O_HELP: fputs(usage_migrate, stdout); return 0;
		default: {
			char m[160];
			snprintf(m, sizeof(m), "unknown or incomplete option '%s'", argv[optind - 1]);
			return bad_flag("migrate", m);
		}
		}
	}
	if (optind < argc)
		return bad_flag("migrate", "unexpected argument");
	if (!o.from || !o.to)
		return bad_flag("migrate", "--from and --to are required");
	if (o.connect && !strcmp(o.transport, "dup"))
		return bad_flag("migrate", "--connect goes with --transport unix or tcp");
	if (o.listen && !strcmp(o.transport, "dup"))
		return bad_flag("migrate", "--listen goes with --transport unix or tcp");
	o.containers = conts;
	o.n_containers = ncont;
	o.init = &io;
	struct ctl_migrate_result res;
	int rc = ctl_migrate(&o, &res);
	/* stdout: one line per migrated container, "SOURCE-ID NEW-ID PID" */
	for (size_t i = 0; rc == 0 && i < res.n_containers; i++)
		printf("%s %s %" PRIu32 "\n", res.containers[i].src_id, res.containers[i].new_id,
		       res.containers[i].pid);
	/* then containerd on each host learns where they are */
	if (rc == 0 && (cd.src_addr || cd.dst_addr)) {
		fflush(stdout);
		rc = ctl_containerd_handover(&cd, o.to, res.containers, res.n_containers);
	}
	ctl_migrate_result_free(&res);
	for (size_t i = 0; i < ncont; i++) {
		free(conts[i].src_id);
		free(conts[i].new_id);
		free(conts[i].pod_id);
	}
	free(conts);
	return rc;
}

/* Common: --shim SOCK, --session ID, --id ID. */
static int parse_simple(const char *cmd, const char *usage, int argc, char **argv, const char **shim,
			const char **session, const char **id)
{
	static const struct option lo[] = {
		{ "shim", required_argument, 0, 's' }, { "session", required_argument, 0, 'S' },
		{ "id", required_argument, 0, 'i' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
	};
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': *shim = optarg; break;
		case 'S':
			if (!session)
				return bad_flag(cmd, "--session is not an option of this command");
			*session = optarg;
			break;
		case 'i':
			if (!id)
				return bad_flag(cmd, "--id is not an option of this command");
			*id = optarg;
			break;
		case 'h': fputs(usage, stdout); return -1;
		default: {
			char m[160];
			snprintf(m, sizeof(m), "unknown or incomplete option '%s'", argv[optind - 1]);
			return bad_flag(cmd, m);
		}
		}
	}
	if (optind < argc)
		return bad_flag(cmd, "unexpected argument");
	if (!*shim)
		return bad_flag(cmd, "--shim is required");
	if (session && (!*session || !**session))
		return bad_flag(cmd, "--session is required (and not empty)");
	return 0;
}

static int cmd_watch(int argc, char **argv)
{
	const char *shim = NULL, *session = NULL;
	int rc = parse_simple("watch", usage_watch, argc, argv, &shim, &session, NULL);
	if (rc)
		return rc < 0 ? 0 : rc;
	struct ctl_side s = { .name = "shim", .path = shim };
	if (ctl_side_connect(&s, 0) < 0)
		return 1;
	NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
	req.session_id = (char *)session;
	uint8_t buf[1024];
	size_t len = notifications_request__get_packed_size(&req);
	if (len > sizeof(buf)) {
		ctl_side_close(&s);
		return bad_flag("watch", "--session is too long");
	}
	notifications_request__pack(&req, buf);
	lm_rpc_stream_t *st;
	rc = lm_rpc_client_stream_open(s.c, CTL_MIGRATION_SERVICE, "Notifications", buf, len, NULL, &st);
	if (rc < 0) {
		fprintf(stderr, "lmctl: Notifications on shim (%s): %s\n", shim, strerror(-rc));
		ctl_side_close(&s);
		return 1;
	}
	int ret = 0;
	for (;;) {
		uint8_t *m = NULL;
		size_t ml = 0;
		rc = lm_rpc_stream_recv(st, &m, &ml, 200 * 1000000ll);
		if (rc == -ETIMEDOUT) {
			if (ctl_is_interrupted())
				break;
			continue;
		}
		if (rc == 0)
			break;
		if (rc < 0) {
			const char *msg = "";
			int code = lm_rpc_stream_status(st, &msg);
			if (rc == -EREMOTEIO)
				fprintf(stderr, "lmctl: Notifications on shim (%s): %s: %s\n", shim,
					ctl_code_name(code), msg);
			else
				fprintf(stderr, "lmctl: Notifications on shim (%s): %s\n", shim,
					rc == -EPIPE ? "connection lost" : strerror(-rc));
			ret = 1;
			break;
		}
		NotificationsResponse *r = notifications_response__unpack(NULL, ml, m);
		free(m);
		if (!r) {
			fprintf(stderr, "lmctl: Notifications on shim (%s): an item does not decode\n", shim);
			ret = 1;
			break;
		}
		char line[512];
		ctl_notification_line(r, line, sizeof(line));
		printf("%s\n", line);
		fflush(stdout);
		notifications_response__free_unpacked(r, NULL);
	}
	lm_rpc_stream_close(st);
	ctl_side_close(&s);
	return ret;
}

static const char *status_name(int s)
{
	static const char *const n[] = { "unknown", "created", "running", "stopped", "paused", "pausing" };
	return s >= 0 && s < 6 ? n[s] : "?";
}

static int cmd_state(int argc, char **argv)
{
	const char *shim = NULL, *id = "";
	int rc = parse_simple("state", usage_state, argc, argv, &shim, NULL, &id);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (!id[0])
		return bad_flag("state", "--id is required (a container ID)");
	struct ctl_side s = { .name = "shim", .path = shim };
	if (ctl_side_connect(&s, 0) < 0)
		return 1;
	Containerd__Task__V2__StateRequest req = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	req.id = (char *)id;
	ProtobufCMessage *resp;
	rc = ctl_call(&s, CTL_TASK_SERVICE, "State", &req.base,
		      &containerd__task__v2__state_response__descriptor, &resp, 30ll * 1000000000, false,
		      NULL, 0);
	if (rc == 0) {
		Containerd__Task__V2__StateResponse *r = (void *)resp;
		printf("id=%s pid=%" PRIu32 " status=%s bundle=%s exit_status=%" PRIu32 " stdout=%s stderr=%s\n",
		       r->id, r->pid, status_name(r->status), r->bundle, r->exit_status, r->stdout, r->stderr);
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	ctl_side_close(&s);
	return rc == 0 ? 0 : 1;
}

static int cmd_cancel(int argc, char **argv)
{
	const char *shim = NULL, *session = NULL;
	int rc = parse_simple("cancel", usage_cancel, argc, argv, &shim, &session, NULL);
	if (rc)
		return rc < 0 ? 0 : rc;
	struct ctl_side s = { .name = "shim", .path = shim };
	if (ctl_side_connect(&s, 0) < 0)
		return 1;
	/* the contract answers OK to a Cancel on an idle shim (a retry after
	 * the session ended); say what is true instead of "cancelled" */
	json_t *q = json_pack("{s:s}", "SessionId", session);
	char *qs = q ? json_dumps(q, JSON_COMPACT) : NULL;
	json_decref(q);
	char *ans = NULL;
	if (qs && ctl_call_json(&s, "lmshim.v1.Recovery", "State", qs, 10ll * 1000000000, true, &ans,
				NULL, 0) == 0) {
		json_t *j = json_loads(ans, 0, NULL);
		const char *st = j ? json_string_value(json_object_get(j, "State")) : NULL;
		bool idle = st && !strcmp(st, "Idle");
		json_decref(j);
		free(ans);
		if (idle) {
			free(qs);
			ctl_side_close(&s);
			fprintf(stderr, "lmctl cancel: no migration session on %s (the shim is idle): nothing to cancel\n",
				shim);
			return 1;
		}
	}
	free(qs);
	CancelRequest req = CANCEL_REQUEST__INIT;
	req.session_id = (char *)session;
	rc = ctl_call(&s, CTL_MIGRATION_SERVICE, "Cancel", &req.base, NULL, NULL, 30ll * 1000000000, false,
		      NULL, 0);
	ctl_side_close(&s);
	if (rc == 0)
		printf("cancelled\n");
	return rc == 0 ? 0 : 1;
}

static int cmd_inspect(int argc, char **argv)
{
	const char *shim = NULL;
	int rc = parse_simple("inspect", usage_inspect, argc, argv, &shim, NULL, NULL);
	if (rc)
		return rc < 0 ? 0 : rc;
	struct ctl_side s = { .name = "shim", .path = shim };
	if (ctl_side_connect(&s, 0) < 0)
		return 1;
	static const char q[] = "{\"PropertyTypes\":[\"MemoryDigest\"]}";
	struct lm_rpc_call_opts co = { .timeout_ns = 60ll * 1000000000 };
	struct lm_rpc_result r = {0};
	rc = lm_rpc_client_call(s.c, "lmshim.v1.Inspect", "Properties", q, sizeof(q) - 1, &co, &r);
	int ret = 1;
	if (rc < 0)
		fprintf(stderr, "lmctl: Properties on shim (%s): %s\n", shim, strerror(-rc));
	else if (r.code != 0)
		fprintf(stderr, "lmctl: Properties on shim (%s): %s: %s\n", shim, ctl_code_name(r.code),
			r.message);
	else {
		fwrite(r.payload, 1, r.len, stdout);
		fputc('\n', stdout);
		ret = 0;
	}
	if (rc == 0)
		lm_rpc_result_free(&r);
	ctl_side_close(&s);
	return ret;
}

static int cmd_recover(int argc, char **argv)
{
	enum { O_SESSION = 1, O_FROM, O_TO, O_FSRC, O_FDST, O_TMO, O_HELP };
	static const struct option lo[] = {
		{ "session", required_argument, 0, O_SESSION }, { "from", required_argument, 0, O_FROM },
		{ "to", required_argument, 0, O_TO },
		{ "force-source-gone", no_argument, 0, O_FSRC },
		{ "force-destination-gone", no_argument, 0, O_FDST },
		{ "call-timeout", required_argument, 0, O_TMO }, { "help", no_argument, 0, O_HELP },
		{ 0, 0, 0, 0 },
	};
	struct ctl_recover_opts o = { .call_timeout_ns = 10ll * 1000000000 };
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case O_SESSION: o.session = optarg; break;
		case O_FROM: o.from = sock_path(optarg); break;
		case O_TO: o.to = sock_path(optarg); break;
		case O_FSRC: o.force_source_gone = true; break;
		case O_FDST: o.force_destination_gone = true; break;
		case O_TMO:
			if ((o.call_timeout_ns = ctl_parse_duration(optarg)) <= 0)
				return bad_flag("recover", "--call-timeout wants a duration such as 5s");
			break;
		case O_HELP: fputs(usage_recover, stdout); return 0;
		default: {
			char m[160];
			snprintf(m, sizeof(m), "unknown or incomplete option '%s'", argv[optind - 1]);
			return bad_flag("recover", m);
		}
		}
	}
	if (optind < argc)
		return bad_flag("recover", "unexpected argument");
	if (!o.session || !*o.session || !o.from || !o.to)
		return bad_flag("recover", "--session, --from and --to are required");
	if (strlen(o.session) > 200 || strpbrk(o.session, "\"\\"))
		return bad_flag("recover", "--session must be at most 200 characters, without quotes or backslashes");
	if (o.force_source_gone && o.force_destination_gone)
		return bad_flag("recover", "--force-source-gone and --force-destination-gone exclude each other");
	return ctl_recover(&o);
}

int main(int argc, char **argv)
{
	ctl_install_signals();
	if (lm_fault_init_from_env() < 0)
		return 2;   /* a malformed LM_FAULTS (logged): tests only */
	if (argc < 2) {
		fputs(usage_main, stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage_main, stdout);
		return 0;
	}
	if (!strcmp(cmd, "migrate"))
		return cmd_migrate(argc - 1, argv + 1);
	if (!strcmp(cmd, "watch"))
		return cmd_watch(argc - 1, argv + 1);
	if (!strcmp(cmd, "state"))
		return cmd_state(argc - 1, argv + 1);
	if (!strcmp(cmd, "cancel"))
		return cmd_cancel(argc - 1, argv + 1);
	if (!strcmp(cmd, "inspect"))
		return cmd_inspect(argc - 1, argv + 1);
	if (!strcmp(cmd, "recover"))
		return cmd_recover(argc - 1, argv + 1);
	if (!strcmp(cmd, "demo"))
		return ctl_demo_main(argc - 1, argv + 1);
	fprintf(stderr, "lmctl: unknown command '%s'\n\n%s", cmd, usage_main);
	return 2;
}
