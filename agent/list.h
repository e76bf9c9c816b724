/* list.h -- intrusive doubly linked lists, head-pushed: the connection and
 * transaction lists of the SPOP, HTTP and settlement servers.
 *
 * Owns: LIST_PUSH_AT / LIST_DEL_AT over any struct with two link fields
 * (named by the caller, so one struct can sit on several lists), and
 * LIST_PUSH / LIST_DEL for links named prev and next. `head` is an lvalue
 * pointer to the first element; a deleted element's links are NULL.
 */
#ifndef TOLLGATE_LIST_H
#define TOLLGATE_LIST_H

#define LIST_PUSH_AT(head, e, prev, next) do {                         \
		(e)->prev = NULL;                                      \
		(e)->next = (head);                                    \
		if (head)                                              \
			(head)->prev = (e);                            \
		(head) = (e);                                          \
	} while (0)

#define LIST_DEL_AT(head, e, prev, next) do {                          \
		if ((e)->prev)                                         \
			(e)->prev->next = (e)->next;                   \
		else                                                   \
			(head) = (e)->next;                            \
		if ((e)->next)                                         \
			(e)->next->prev = (e)->prev;                   \
		(e)->prev = (e)->next = NULL;                          \
	} while (0)

#define LIST_PUSH(head, e) LIST_PUSH_AT(head, e, prev, next)
#define LIST_DEL(head, e)  LIST_DEL_AT(head, e, prev, next)

#endif
