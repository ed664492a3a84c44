/*
 * fuzz_oci: libFuzzer target over the shim's readers of the OCI JSON a
 * client hands it: the runtime-spec "process" of a Create's config.json or
 * an Exec's spec (shim/ociproc.h), and the "LinuxResources" of a task
 * Update (shim/ocires.h). The first byte picks the reader. Any input is
 * refused cleanly or read into values within the rules the guest agent
 * checks again (a weight within 1..10000, a period within 1000..1000000).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shim/ocires.h"
#include "shim/ociproc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[256];
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		struct lm_oci_resources r;
		if (lm_oci_resources_parse(data + 1, size - 1, &r, why, sizeof why) != 0)
			return 0;
		if ((r.set_cpu_weight && (r.cpu_weight < 1 || r.cpu_weight > 10000)) ||
		    (r.set_cpu_max && r.cpu_period_us && (r.cpu_period_us < 1000 || r.cpu_period_us > 1000000)) ||
		    (r.set_cpu_max && r.cpu_quota_us && r.cpu_quota_us < 1000) ||
		    memchr(r.ignored, 0, sizeof r.ignored) == NULL)
			abort();
		return 0;
	}
	struct lm_oci_proc p;
	if (lm_oci_proc_parse((const char *)data + 1, size - 1, "fuzz", &p, why, sizeof why) != 0)
		return 0;
	if (p.n_args < 1 || !p.args || !p.args[0] || !p.width || !p.height)
		abort();
	lm_oci_proc_clear(&p);
	return 0;
}
