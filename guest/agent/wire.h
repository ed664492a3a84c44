/*
 * wire.h: the agent's link handshake, shared by the guest agent
 * (guest/agent/relay.c) and the host's client (hcs/agent/client.c).
 *
 * The virtio-serial port is a byte pipe whose host side comes and goes
 * (the shim restarts, the VM migrates and the destination's QEMU has its
 * own chardev socket), and neither side can be sure where the other's
 * byte stream stands when that happens. So every connection starts with
 * a handshake that both sides can find in a stream of stale bytes:
 *
 *   host  -> guest  HELLO  "\xffLMSHELO" | nonce (8 bytes)            16 bytes
 *   guest -> host   ACK    "\xffLMSHACK" | nonce (8 bytes) |
 *                          version (u32 BE) | reserved (u32, 0)         24 bytes
 *
 * after which ttrpc frames flow both ways until the host goes away. The
 * leading 0xff can never start a ttrpc frame (a frame's 32-bit big-endian
 * length is at most 4 MiB, so its first byte is 0x00), which is how the
 * guest spots a HELLO at a frame boundary even when it did not see the
 * host leave. The host picks a fresh random nonce per attempt and skips
 * everything before the ACK carrying it, so stale guest output can never
 * be mistaken for the start of the new connection.
 */
#ifndef LM_GUEST_AGENT_WIRE_H
#define LM_GUEST_AGENT_WIRE_H

#include <stdint.h>

#define LM_AGENT_HELLO_MAGIC "\xffLMSHELO"   /* 8 bytes, no NUL */
#define LM_AGENT_ACK_MAGIC   "\xffLMSHACK"
#define LM_AGENT_MAGIC_LEN   8u
#define LM_AGENT_HELLO_LEN   16u
#define LM_AGENT_ACK_LEN     24u
#define LM_AGENT_PROTOCOL    1u              /* the ACK's version and Info's */
#define LM_AGENT_PORT_NAME   "lmshim.agent"  /* the virtserialport's name= */
#define LM_AGENT_SERVICE     "lmshim.agent.v1.Agent"

#endif
