# Project-wide warning and sanitizer flags, applied through kvgate_target().
option(KVGATE_BUILD_FUZZERS "Build the libFuzzer targets in tests/fuzz (clang)" OFF)
add_library(kvgate_flags INTERFACE)
target_compile_options(kvgate_flags INTERFACE -Wall -Wextra)
if(KVGATE_WERROR)
  target_compile_options(kvgate_flags INTERFACE -Werror)
endif()
if(KVGATE_SANITIZE)
  target_compile_options(kvgate_flags INTERFACE
    -fsanitize=${KVGATE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(kvgate_flags INTERFACE -fsanitize=${KVGATE_SANITIZE})
  # ThreadSanitizer cannot see Debian's prebuilt absl::Mutex: every
  # executable gets the annotating wrappers (docs/sanitizers.md).
  if(KVGATE_SANITIZE MATCHES "thread")
    target_sources(kvgate_flags INTERFACE
      $<$<STREQUAL:$<TARGET_PROPERTY:TYPE>,EXECUTABLE>:${PROJECT_SOURCE_DIR}/tests/sanitizers/tsan_absl_sync.cc>)
    target_link_libraries(kvgate_flags INTERFACE ${CMAKE_DL_LIBS})
    target_compile_options(kvgate_flags INTERFACE
      -fsanitize-ignorelist=${PROJECT_SOURCE_DIR}/tests/sanitizers/tsan_ignorelist.txt)
  endif()
endif()
# libFuzzer targets (tests/fuzz; clang with KVGATE_SANITIZE=address,...
# only): every library gets coverage instrumentation
# so that the fuzzers are guided through kvgate's code.
if(KVGATE_BUILD_FUZZERS)
  target_compile_options(kvgate_flags INTERFACE -fsanitize=fuzzer-no-link)
endif()

# kvgate_test(NAME SOURCES... LIBS ...): a GoogleTest binary registered with ctest.
function(kvgate_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;PROPERTIES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gmock_main kvgate_flags)
  target_compile_definitions(${name} PRIVATE
    KVGATE_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests/data"
    KVGATE_BINARY_DIR="${PROJECT_BINARY_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300 ${ARG_PROPERTIES})
endfunction()
