// GNU extensions tcpaod needs from glibc, which Swift's Glibc module does not import (they
// need _GNU_SOURCE, defined in csysshim.c only).
#ifndef CSYSSHIM_H
#define CSYSSHIM_H
#include <spawn.h>

/// pipe2(fds, O_CLOEXEC): both ends close-on-exec from the start (no window in which another
/// thread's spawn could inherit them).
int tcpaod_pipe_cloexec(int fds[2]);

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child closes every descriptor
/// from `from` up, so a tool inherits nothing of the daemon's (netlink sockets, clients).
int tcpaod_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);
#endif
