// Placeholder until the plan command lands; exits 1 with a clear message.
#include <iostream>

#include "tools/commands.h"

namespace kvgate {
int RunPlanCommand(const CommandArgs&) {
  std::cerr << "kvgate plan: not built yet" << std::endl;
  return 1;
}
}  // namespace kvgate
