/* placeholder until the store tests are written: fails so that nothing passes silently */
#include "t.h"
static void not_written(void) { t_fail(__FILE__, __LINE__, "store tests not written yet"); }
int main(void) { T_RUN(not_written); return t_done(); }
