// ByteSize: exact bytes next to a binary size, for error messages.
#include "estimator/byte_size.h"

#include "gtest/gtest.h"

namespace kvgate {
namespace {

TEST(ByteSizeTest, BytesThenOneDecimalInTheLargestBinaryUnit) {
  EXPECT_EQ(ByteSize(85899345920), "85899345920 B (80.0 GiB)");
  EXPECT_EQ(ByteSize(1572864), "1572864 B (1.5 MiB)");
  EXPECT_EQ(ByteSize(1024), "1024 B (1.0 KiB)");
  EXPECT_EQ(ByteSize(512), "512 B");
  EXPECT_EQ(ByteSize(0), "0 B");
  EXPECT_EQ(ByteSize(UINT64_MAX), "18446744073709551615 B (16.0 EiB)");
}

}  // namespace
}  // namespace kvgate
