# tests/interop: real peers we did not write, against our server.
#  - ttrpc_peer: a Go client/server built offline from Debian's
#    golang-github-containerd-ttrpc-dev (GOPATH mode) into the build tree.
#  - ctr: Debian's containerd package's `ctr shim ... state`, extracted
#    into the build tree by fetch_ctr.sh (apt-get download + dpkg -x).
# Included from tests/rpc.cmake. The tests skip, saying why, only where
# the packages cannot be installed.
find_program(LM_GO go)
set(LM_TTRPC_GO_SRC /usr/share/gocode/src/github.com/containerd/ttrpc)
set(LM_TTRPC_PEER "")
if(LM_GO AND EXISTS ${LM_TTRPC_GO_SRC}/client.go)
  set(LM_TTRPC_PEER ${CMAKE_BINARY_DIR}/tests/interop/ttrpc_peer)
  add_custom_command(
    OUTPUT ${LM_TTRPC_PEER}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/interop/build_go.sh ${LM_TTRPC_PEER}
            ${CMAKE_CURRENT_SOURCE_DIR}/interop/ttrpc_peer ${CMAKE_BINARY_DIR}/go
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/interop/ttrpc_peer/main.go
            ${CMAKE_CURRENT_SOURCE_DIR}/interop/build_go.sh
    COMMENT "go build ttrpc_peer (offline, Debian's ttrpc)"
    VERBATIM)
  add_custom_target(ttrpc_peer ALL DEPENDS ${LM_TTRPC_PEER})
else()
  message(STATUS "interop: go or golang-github-containerd-ttrpc-dev missing; the Go interop test will skip")
endif()

lm_add_test(test_rpc_interop SOURCES test_rpc_interop.c LIBS lm_rpc lm_proto TIMEOUT 300)
target_compile_definitions(test_rpc_interop PRIVATE
  LM_TTRPC_PEER="${LM_TTRPC_PEER}"
  LM_FETCH_CTR="${CMAKE_CURRENT_SOURCE_DIR}/interop/fetch_ctr.sh"
  LM_CTR_DIR="${CMAKE_BINARY_DIR}/tests/interop/ctr")
