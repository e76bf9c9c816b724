/* messages.h -- the table of SPOP messages the agent answers.
 *
 * Owns: which message name goes to which decision. Each decision lives in
 * its own file of agent/; this file only wires them to the SPOP server.
 */
#ifndef TOLLGATE_MESSAGES_H
#define TOLLGATE_MESSAGES_H

#include "spop_server.h"

struct agent;

/* Register every handler the configuration enables. */
void messages_register(struct spop_server *srv, struct agent *agent);

#endif
