/* placeholder: being written by the conf owner */
