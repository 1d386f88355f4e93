# Project-wide warning and sanitizer flags, applied through kvgate_target().
add_library(kvgate_flags INTERFACE)
target_compile_options(kvgate_flags INTERFACE -Wall -Wextra)
if(KVGATE_WERROR)
  target_compile_options(kvgate_flags INTERFACE -Werror)
endif()
if(KVGATE_SANITIZE)
  target_compile_options(kvgate_flags INTERFACE
    -fsanitize=${KVGATE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(kvgate_flags INTERFACE -fsanitize=${KVGATE_SANITIZE})
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
