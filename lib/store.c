/* placeholder: being written by the store owner */
