// libzmq for Swift, plus eventfd, which the socket thread polls beside its socket to learn about queued sends.
#include <zmq.h>
#include <sys/eventfd.h>
#include <unistd.h>
