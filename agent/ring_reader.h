/* ring_reader.h -- settlement records from HAProxy's ring (see ring_reader.c). */
#ifndef TOLLGATE_RING_READER_H
#define TOLLGATE_RING_READER_H

#include <stddef.h>
#include <stdint.h>

/* The ring the renderer declares and the log-format writes into. */
#define RING_READER_RING "tollgate_settle"

struct agent;
struct ring_reader;

/* Read the ring over HAProxy's CLI at addr (agent.settle: "host:port" or a
 * unix socket path); connects in the background and keeps trying. */
struct ring_reader *ring_reader_new(struct agent *a, const char *addr, char *err,
                                    size_t errlen);
void ring_reader_free(struct ring_reader *rr);
#endif
