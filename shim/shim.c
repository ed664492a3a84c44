/*
 * shim.c: builds one lmshim: runtime, actors, ttrpc server, services.
 *
 * Order of construction: the runtime; the notifier and the transport; the
 * controller (which owns the sandbox and, once booted, the VM); the rpc
 * server with the Migration, task and Inspect services; then, with a VM
 * document, the boot (VM created and started, containers running).
 * Destruction runs the other way: the controller quiesces (any migration
 * cancelled, the VM closed, every stream ended), the rpc server shuts down
 * gracefully, the actors stop and the runtime joins every thread.
 */
#include "shim/shim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/controller.h"
#include "shim/publisher.h"
#include "actors/notifier.h"
#include "actors/tls_link.h"
#include "shim/sandbox_api.h"
#include "shim/task_service.h"
#include "actors/transport.h"
#include "rpc/server.h"
#include "util/log.h"

struct lm_shim {
	lm_runtime_t *rt;
	lm_actor_t *notifier;
	lm_actor_t *transport;
	lm_actor_t *controller;
	lm_publisher_t *publisher;
	lm_rpc_server_t *server;
	struct lm_rpc_service mig, inspect, recovery, task, sandbox;
	lm_tls_ctx_t *tls;                    /* the migration links' TLS, or NULL */
};

static void teardown(lm_shim_t *s)
{
	if (s->controller)
		lm_controller_quiesce(s->controller);
	if (s->server)
		lm_rpc_server_destroy(s->server);
	lm_actor_t *actors[] = { s->controller, s->transport, s->notifier };
	for (unsigned i = 0; i < 3; i++)
		if (actors[i])
			lm_actor_stop(actors[i]);
	if (s->rt)
		lm_runtime_destroy(s->rt);
	for (unsigned i = 0; i < 3; i++)
		if (actors[i])
			lm_actor_unref(actors[i]);
	lm_publisher_destroy(s->publisher);   /* after the controller: flushes its last events */
	lm_tls_ctx_free(s->tls);              /* (a relay still ending holds its own references) */
	free(s);
}

int lm_shim_create(lm_shim_t **out, const struct lm_shim_config *cfg)
{
	lm_shim_t *s = calloc(1, sizeof(*s));
	struct lm_runtime_config rc_cfg = { .workers = cfg->workers };
	struct lm_rpc_server_config scfg = { .any_uid = cfg->any_uid };
	char err[256];
	int rc;

	if (!s)
		return -ENOMEM;
	if (!cfg->socket || !*cfg->socket) {
		lm_log_error("shim", "no socket address", NULL);
		free(s);
		return -EINVAL;
	}
	rc = lm_runtime_create(&s->rt, &rc_cfg);
	if (rc)
		goto fail;
	rc = lm_notifier_spawn(s->rt, &s->notifier, NULL);
	if (rc)
		goto fail;
	if (cfg->migration_tls_dir && *cfg->migration_tls_dir) {
		rc = lm_tls_ctx_load(&s->tls, cfg->migration_tls_dir, err, sizeof(err));
		if (rc) {
			lm_log_error("shim", "migration TLS not set up", "why=\"%s\"", err);
			goto fail;
		}
		lm_log_info("shim", "migration links use mutual TLS 1.3", "dir=%s", cfg->migration_tls_dir);
	}
	struct lm_transport_config tcfg = { .tls = s->tls, .insecure = cfg->insecure_migration };
	rc = lm_transport_spawn_cfg(s->rt, &s->transport, &tcfg);
	if (rc)
		goto fail;
	if (cfg->events_address && *cfg->events_address) {
		rc = lm_publisher_create(&s->publisher, cfg->events_address, cfg->ns ? cfg->ns : "default");
		if (rc) {
			lm_log_error("shim", "cannot start the event publisher", "address=%s err=\"%s\"",
				     cfg->events_address, strerror(-rc));
			goto fail;
		}
	}
	rc = lm_controller_spawn(s->rt, &s->controller, cfg, s->notifier, s->transport, s->publisher);
	if (rc)
		goto fail;
	rc = lm_rpc_server_create(&s->server, &scfg);
	if (rc)
		goto fail;
	lm_migration_service_init(&s->mig, &s->inspect, &s->recovery, s->controller);
	lm_task_service_init(&s->task, s->controller);
	lm_sandbox_api_init(&s->sandbox, s->controller);
	if ((rc = lm_rpc_server_register(s->server, &s->mig)) ||
	    (rc = lm_rpc_server_register(s->server, &s->inspect)) ||
	    (rc = lm_rpc_server_register(s->server, &s->recovery)) ||
	    (rc = lm_rpc_server_register(s->server, &s->task)) ||
	    (rc = lm_rpc_server_register(s->server, &s->sandbox)))
		goto fail;
	rc = lm_rpc_server_listen(s->server, cfg->socket);
	if (rc) {
		lm_log_error("shim", "cannot listen", "socket=%s err=\"%s\"%s", cfg->socket, strerror(-rc),
			     rc == -EADDRINUSE ? " why=\"another shim serves this socket: stop it first\"" : "");
		goto fail;
	}
	if (cfg->vm_document) {
		rc = lm_controller_boot(s->controller, err, sizeof(err));
		if (rc) {
			lm_log_error("shim", "boot failed", "err=\"%s\" cause=\"%s\"", strerror(-rc), err);
			goto fail;
		}
	}
	rc = lm_rpc_server_start(s->server);
	if (rc)
		goto fail;
	lm_log_info("shim", "serving", "socket=%s id=%s vm=%s containers=%u", cfg->socket,
		    cfg->id ? cfg->id : "-", cfg->vm_document ? "yes" : "no", cfg->n_containers);
	*out = s;
	return 0;
fail:
	teardown(s);
	return rc;
}

void lm_shim_destroy(lm_shim_t *s)
{
	if (s)
		teardown(s);
}
