// Test helper: the script file that drives the fake libnvidia-ml
// (fake_nvml.cc documents its format). Constructing one points
// KVGATE_FAKE_NVML_SCRIPT at a fresh file in the test's temporary directory.
#ifndef KVGATE_TESTS_PLUGIN_FAKE_NVML_SCRIPT_H_
#define KVGATE_TESTS_PLUGIN_FAKE_NVML_SCRIPT_H_

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace kvgate {

class FakeNvmlScript {
 public:
  FakeNvmlScript() {
    const ::testing::TestInfo* test =
        ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = ::testing::TempDir() + "fake_nvml_" + test->test_suite_name() +
            "_" + test->name() + ".txt";
    setenv("KVGATE_FAKE_NVML_SCRIPT", path_.c_str(), /*overwrite=*/1);
  }
  ~FakeNvmlScript() {
    unsetenv("KVGATE_FAKE_NVML_SCRIPT");
    std::remove(path_.c_str());
  }

  // Replaces what the fake driver reports from its next call on.
  void Write(const std::string& text) {
    std::ofstream file(path_, std::ios::trunc);
    file << text;
    ASSERT_TRUE(file.good()) << "cannot write " << path_;
  }

 private:
  std::string path_;
};

}  // namespace kvgate

#endif  // KVGATE_TESTS_PLUGIN_FAKE_NVML_SCRIPT_H_
