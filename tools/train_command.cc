// Placeholder until the train command lands; exits 1 with a clear message.
#include <iostream>

#include "tools/commands.h"

namespace kvgate {
int RunTrainCommand(const CommandArgs&) {
  std::cerr << "kvgate train: not built yet" << std::endl;
  return 1;
}
}  // namespace kvgate
