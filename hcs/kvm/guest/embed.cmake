# embed.cmake: cmake -P script run at build time; turns the guest's flat
# binary (IN) into a C source (OUT) defining lm__kvm_guest_bin[] and
# lm__kvm_guest_bin_len. The output lives in the build tree only.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR n "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n\t" body "${body}")
file(WRITE "${OUT}"
"/* Generated at build time from the kvm guest program (hcs/kvm/guest). */\n"
"const unsigned char lm__kvm_guest_bin[] = {\n\t${body}\n};\n"
"const unsigned int lm__kvm_guest_bin_len = ${n};\n")
