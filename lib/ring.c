/* placeholder: being written by the ring owner */
